#!/usr/bin/env bash
# The GPU check, for a machine with a CUDA GPU (under 10 minutes):
#   1. reward scoring on the GPU against the CPU (benchmarks/reward_scoring.py, MLP and Atari CNN);
#   2. a short ALE/Pong-v5 run of `rlhp train --device cuda` (learner and reward model on the GPU),
#      its env steps/s against the same run with --device cpu;
# then one table. Results go to $OUT (default: ./gpu_results).
#
#     bash benchmarks/gpu.sh                 # everything
#     STEPS=2000 bash benchmarks/gpu.sh      # a shorter Pong run (default 4000)
# Time limits: 2 x 90 s scoring + 2 x 150 s Pong, so the whole check fits a 10-minute call.
#
# Needs the project installed with a CUDA build of torch (scripts/install.sh installs the CPU wheel).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_results}"
STEPS="${STEPS:-4000}"
mkdir -p "$OUT"
export MUJOCO_GL="${MUJOCO_GL:-egl}" PYTHONUNBUFFERED=1

python - <<'EOF' || { echo "gpu.sh: torch sees no CUDA GPU; nothing to measure" >&2; exit 2; }
import torch
assert torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
EOF

echo "== 1. reward scoring: cuda vs cpu"
for dev in cuda cpu; do
  timeout 90 python benchmarks/reward_scoring.py --quick --device "$dev" --threads 4 \
    > "$OUT/scoring_$dev.md" 2> "$OUT/scoring_$dev.log" || echo "scoring on $dev failed (see $OUT/scoring_$dev.log)"
done

echo "== 2. Pong, $STEPS env steps: --device cuda vs --device cpu"
for dev in cuda cpu; do
  rm -rf "$OUT/runs_$dev"
  timeout 150 rlhp train --env ALE/Pong-v5 --steps "$STEPS" --device "$dev" --runs-dir "$OUT/runs_$dev" \
    --name pong > "$OUT/pong_$dev.log" 2>&1 || echo "Pong on $dev stopped early (see $OUT/pong_$dev.log)"
done

python - "$OUT" <<'EOF'
import csv, sys
from pathlib import Path

out = Path(sys.argv[1])
print("\n| what | cuda | cpu | cuda/cpu |\n|---|---:|---:|---:|")
def scoring(dev):
    rows = {}
    for line in (out / f"scoring_{dev}.md").read_text().splitlines() if (out / f"scoring_{dev}.md").exists() else []:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 4 and cells[1].isdigit():
            rows[(cells[0], int(cells[1]))] = float(cells[2].replace(",", ""))
    return rows
gpu, cpu = scoring("cuda"), scoring("cpu")
for key in sorted(set(gpu) | set(cpu)):
    g, c = gpu.get(key, float("nan")), cpu.get(key, float("nan"))
    print(f"| score {key[0]}, batch {key[1]} (transitions/s) | {g:,.0f} | {c:,.0f} | {g / c:.1f} |")
def pong(dev):
    path = out / f"runs_{dev}" / "pong" / "metrics.csv"
    if not path.exists():
        return float("nan"), float("nan")
    rows = list(csv.DictReader(path.open()))
    if not rows:
        return float("nan"), float("nan")
    last = rows[-1]
    return float(last["env_steps"]) / float(last["time_s"]), float(last["env_steps"])
(g, gs), (c, cs) = pong("cuda"), pong("cpu")
print(f"| Pong end to end, env steps/s (incl. start-up, pretraining) | {g:.0f} ({gs:.0f} steps) | {c:.0f} ({cs:.0f} steps) | {g / c:.1f} |")
EOF
