#!/usr/bin/env bash
# Submit `rlhp train` to a running Ray cluster as a Ray job (see deploy/README.md).
#
#   deploy/submit.sh --env ALE/Pong-v5                                  # one game
#   deploy/submit.sh --env ALE/Pong-v5 --env ALE/Breakout-v5            # many games, one job
#   deploy/submit.sh --per-game --env ALE/Pong-v5 --env ALE/Breakout-v5 # many games, a job each
#   deploy/submit.sh --gpu 1 --env Hopper-v5 -- --set reward.device=cuda --steps 2000000
#
# options (everything after `--` goes to `rlhp train` as it is):
#   --address URL    the cluster's dashboard (default: $RAY_ADDRESS, else http://127.0.0.1:8265;
#                    `ray dashboard deploy/aws.yaml` forwards the head's 8265 there)
#   --env ID         a game; repeat for many games
#   --per-game       one job per game (parallel jobs, each with its own services) instead of one
#                    `rlhp train --env A --env B` job
#   --gpu N          GPUs reserved for the job's driver, which hosts the reward service and the
#                    learner: the driver then runs on a GPU node (ray job submit --entrypoint-num-gpus)
#   --cpus N         CPUs reserved for the driver (--entrypoint-num-cpus)
#   --runs-dir DIR   run directories on the node that runs the driver (default ~/rlhp-runs)
#   --id ID          submission id (with --per-game: ID-<game>); default rlhp-<games>-<time>
#   --no-wait        return once submitted (follow with `ray job logs -f ID`)
#   --dry-run        print the `ray job submit` commands instead of running them
#
# The job's code is this checkout (--working-dir, uploaded on each submit); the cluster's
# `pip install -e ~/rlhp` provides the dependencies.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

address="${RAY_ADDRESS:-http://127.0.0.1:8265}"
envs=(); per_game=0; gpus=""; cpus=""; runs_dir='~/rlhp-runs'; id=""; wait=1; dry=0; extra=()
die() { echo "deploy/submit.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --address) address="${2:?--address needs a URL}"; shift 2 ;;
    --env) envs+=("${2:?--env needs a gymnasium id}"); shift 2 ;;
    --per-game) per_game=1; shift ;;
    --gpu) gpus="${2:?--gpu needs a number}"; shift 2 ;;
    --cpus) cpus="${2:?--cpus needs a number}"; shift 2 ;;
    --runs-dir) runs_dir="${2:?--runs-dir needs a directory}"; shift 2 ;;
    --id) id="${2:?--id needs a name}"; shift 2 ;;
    --no-wait) wait=0; shift ;;
    --dry-run) dry=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (rlhp train options go after --; see --help)" ;;
  esac
done
[ ${#envs[@]} -gt 0 ] || die "give at least one --env"
case "$address" in http://*|https://*) ;; *) die "--address wants the dashboard URL, e.g. http://127.0.0.1:8265" ;; esac

slug() { echo "$1" | sed 's|^ALE/||; s|^rlhp/||; s|[^A-Za-z0-9]|-|g' | tr 'A-Z' 'a-z'; }
stamp="$(date +%Y%m%d-%H%M%S)"

submit() {  # submit ID ENV...
  local job_id="$1"; shift
  local cmd=(ray job submit --address "$address" --submission-id "$job_id"
             --working-dir "$repo"
             --runtime-env-json '{"excludes": ["/.git", "/runs", "__pycache__", "*.egg-info"]}')
  [ -n "$gpus" ] && cmd+=(--entrypoint-num-gpus "$gpus")
  [ -n "$cpus" ] && cmd+=(--entrypoint-num-cpus "$cpus")
  [ $wait = 0 ] && cmd+=(--no-wait)
  # `ray job submit` quotes the entrypoint (shlex.join), so a `~/` in --runs-dir is expanded by
  # a small sh on the driver's node: the runs stay in that node's home, not in the job's
  # temporary working directory.
  cmd+=(-- sh -c 'd=$1; shift; case $d in "~/"*) d=$HOME/${d#??} ;; esac; exec rlhp train --runs-dir "$d" "$@"'
        rlhp-train "$runs_dir" --address auto)
  local e
  for e in "$@"; do cmd+=(--env "$e"); done
  cmd+=("${extra[@]}")
  if [ $dry = 1 ]; then printf '%q ' "${cmd[@]}"; echo; return 0; fi
  echo "== submitting $job_id: rlhp train $* (${address})" >&2
  "${cmd[@]}"
}

if [ $per_game = 1 ] || [ ${#envs[@]} = 1 ]; then
  # One job per game; without --no-wait they run one after another, so submit all first.
  if [ ${#envs[@]} -gt 1 ] && [ $wait = 1 ]; then wait=0; follow=1; else follow=0; fi
  ids=()
  for e in "${envs[@]}"; do
    if [ -n "$id" ]; then
      job_id="$id"; [ ${#envs[@]} -gt 1 ] && job_id="$id-$(slug "$e")"
    else
      job_id="rlhp-$(slug "$e")-$stamp"
    fi
    submit "$job_id" "$e"
    ids+=("$job_id")
  done
  if [ "$follow" = 1 ] && [ $dry = 0 ]; then
    status=0
    for job_id in "${ids[@]}"; do
      ray job logs --address "$address" --follow "$job_id" || true
      state="$(ray job status --address "$address" "$job_id" 2>&1 | tail -n 5)"
      echo "$state"
      echo "$state" | grep -q SUCCEEDED || status=1
    done
    exit $status
  fi
else
  submit "${id:-rlhp-$(slug "${envs[0]}")-and-$((${#envs[@]} - 1))-more-$stamp}" "${envs[@]}"
fi
