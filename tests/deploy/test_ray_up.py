"""What an operator does, on this machine: `ray up` over SSH, `ray job submit`, `ray down`.

The "cluster" is this machine reached at 127.0.0.1, with deploy/local-loopback.yaml:

1. A private sshd on 127.0.0.1, on a free high port, with its own config file, host key and
   authorized_keys in a temporary directory (nothing in the machine's own SSH setup changes).
   Ray's SSH command runner has no port setting; the supported way in is `auth.ssh_proxy_command`
   (OpenSSH's ProxyCommand), here `nc 127.0.0.1 PORT`.
2. `ray up -y` of the loopback config with the test's key, cluster name and free ports; Ray stays
   on loopback (node and GCS address — checked on the processes' command lines — and dashboard)
   and in its own `--temp-dir`.
3. `deploy/submit.sh` → `ray job submit --address http://127.0.0.1:PORT -- rlhp train --env ...
   --preset smoke` (two games in one job once `learner/multi.py` exists), waits for SUCCEEDED,
   and checks that every game reports env steps (metrics.csv) and labels (labels.sqlite).
4. `ray down -y`, then the cluster's leftover processes, sshd and the temporary directory go,
   whatever happened before.

Shared-machine care: the sshd sessions run with HOME set to a temporary directory whose .bashrc
puts this Python's `ray` on PATH and turns `ray stop` (which `ray up` and `ray down` run on the
head, and which would end every Ray process of the user — other people's clusters too) into
`scoped_ray_stop.py`: only the processes of this cluster, by id.

Needs: sshd, ssh-keygen, nc, rsync (`bash scripts/install.sh --dev`). Run alone:
    python -m pytest tests/deploy -q -p no:cacheprovider -m "cluster or not cluster"
Games: RLHP_CLUSTER_TEST_ENVS="ALE/Pong-v5,ALE/Breakout-v5" overrides the default tiny ones.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(3000)]

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent  # the `ray` and `rlhp` of this Python
TOOLS = ("sshd", "ssh", "ssh-keygen", "nc", "rsync")


def _tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"({path}: {e})"
    return "\n".join(text[-lines:])


def _ray_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("RAY_ADDRESS", None)
    return env


def default_games() -> list[str]:
    override = os.environ.get("RLHP_CLUSTER_TEST_ENVS")
    if override:
        return [e.strip() for e in override.split(",") if e.strip()]
    if (REPO / "learner" / "multi.py").exists():
        return ["rlhp/FixedCartPole-v0", "CartPole-v1"]
    return ["rlhp/FixedCartPole-v0"]


class LoopbackCluster:
    """sshd + `ray up`/`ray down` of deploy/local-loopback.yaml in one temporary directory."""

    def __init__(self) -> None:
        missing = [t for t in TOOLS if _tool(t) is None]
        if missing:
            pytest.fail(f"the cluster test needs {', '.join(missing)}: run `bash scripts/install.sh "
                        "--dev` (Debian packages openssh-server, openssh-client, netcat-openbsd, rsync)")
        # Short: Ray's Unix socket paths live under it (limit ~107 characters).
        self.tmp = Path(tempfile.mkdtemp(prefix="rlhpup-", dir="/tmp"))
        self.home = self.tmp / "home"
        self.ray_tmp = self.tmp / "ray"
        self.runs = self.tmp / "runs"
        self.logs = self.tmp / "logs"
        for d in (self.home, self.runs, self.logs):
            d.mkdir()
        self.user = getpass.getuser()
        self.ssh_port, self.gcs_port, self.dash_port = _free_port(), _free_port(), _free_port()
        self.agent_port, self.client_port, self.metrics_port = _free_port(), _free_port(), _free_port()
        self.name = f"rlhp-loopback-{os.getpid()}"
        self.config = self.tmp / "cluster.yaml"
        self.sshd: subprocess.Popen | None = None
        self.up_done = False
        self.passed = False
        self.timings: dict[str, float] = {}

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dash_port}"

    def markers(self) -> list[str]:
        return [str(self.ray_tmp), str(self.runs)]

    # ---- sshd -------------------------------------------------------------------------------

    def start_sshd(self) -> None:
        t = self.tmp
        subprocess.run([_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", "rlhp-test-host",
                        "-f", str(t / "host_ed25519")], check=True)
        subprocess.run([_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", "rlhp-test-client",
                        "-f", str(t / "id_ed25519")], check=True)
        shutil.copy(t / "id_ed25519.pub", t / "authorized_keys")
        os.chmod(t / "authorized_keys", 0o600)
        # The session each connection gets: this test's HOME (its own .bashrc), not the user's.
        session = t / "session.sh"
        session.write_text("#!/bin/bash\n"
                           f"export HOME={self.home} BASH_ENV={self.home}/.bashrc\n"
                           'cd "$HOME" || exit 1\n'
                           'exec /bin/bash -c "${SSH_ORIGINAL_COMMAND:-exec /bin/bash -l}"\n')
        session.chmod(0o755)
        stop = f"{sys.executable} {HERE / 'scoped_ray_stop.py'} {' '.join(self.markers())}"
        bashrc = (
            "# written by tests/deploy/test_ray_up.py for its loopback cluster\n"
            f'case ":$PATH:" in *":{BIN}:"*) ;; *) export PATH="{BIN}:$PATH" ;; esac\n'
            "export RAY_USAGE_STATS_ENABLED=0\n"
            "# `ray stop` ends only this test cluster's processes (see scoped_ray_stop.py)\n"
            f'ray() {{ if [ "$1" = stop ]; then {stop}; else command ray "$@"; fi; }}\n')
        (self.home / ".bashrc").write_text(bashrc)
        (self.home / ".profile").write_text(". ~/.bashrc\n")
        (t / "sshd_config").write_text("\n".join([
            f"Port {self.ssh_port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {t / 'host_ed25519'}",
            f"PidFile {t / 'sshd.pid'}",
            f"AuthorizedKeysFile {t / 'authorized_keys'}",
            f"AllowUsers {self.user}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "X11Forwarding no",
            "AllowTcpForwarding local",
            "PermitUserEnvironment no",
            "MaxSessions 50",
            "MaxStartups 50:30:100",
            f"ForceCommand {session}",
            "LogLevel VERBOSE",
            "",
        ]))
        # sshd's privilege-separation directory (Debian's init script creates it the same way).
        with contextlib.suppress(OSError):  # not root: sshd then serves only this user anyway
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        subprocess.run([_tool("sshd"), "-t", "-f", str(t / "sshd_config")], check=True)
        log = open(self.logs / "sshd.log", "w")
        self.sshd = subprocess.Popen([_tool("sshd"), "-D", "-e", "-f", str(t / "sshd_config")],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.sshd.poll() is not None:
                pytest.fail(f"sshd exited ({self.sshd.returncode}):\n{_tail(self.logs / 'sshd.log')}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.ssh_port), 1):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"sshd does not listen on 127.0.0.1:{self.ssh_port}:\n{_tail(self.logs / 'sshd.log')}")
        # One plain ssh round trip through the same proxy command Ray will use.
        out = subprocess.run(
            [_tool("ssh"), "-i", str(t / "id_ed25519"), "-o", "IdentitiesOnly=yes",
             "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={os.devnull}",
             "-o", "BatchMode=yes", "-o", f"ProxyCommand=nc 127.0.0.1 {self.ssh_port}",
             f"{self.user}@127.0.0.1", "bash --login -c -i 'source ~/.bashrc; echo HOME=$HOME; type ray'"],
            capture_output=True, text=True, timeout=60)
        if f"HOME={self.home}" not in out.stdout or "function" not in out.stdout:
            pytest.fail(f"ssh to the test sshd failed ({out.returncode}):\n{out.stdout}\n{out.stderr}\n"
                        f"sshd log:\n{_tail(self.logs / 'sshd.log')}")

    # ---- ray up / down ------------------------------------------------------------------------

    def write_config(self) -> dict:
        cfg = yaml.safe_load((REPO / "deploy" / "local-loopback.yaml").read_text())
        cfg["cluster_name"] = self.name
        cfg["auth"] = {"ssh_user": self.user, "ssh_private_key": str(self.tmp / "id_ed25519"),
                       "ssh_proxy_command": f"nc 127.0.0.1 {self.ssh_port}"}
        # A file mount, as the cloud configs ship the repo: exercises rsync over the same path.
        cfg["file_mounts"] = {"~/rlhp-deploy": str(REPO / "deploy")}
        start = []
        for cmd in cfg["head_start_ray_commands"]:
            if "ray start" in cmd:
                cmd = re.sub(r"--port=\d+", f"--port={self.gcs_port}", cmd)
                cmd = re.sub(r"--dashboard-port=\d+", f"--dashboard-port={self.dash_port}", cmd)
                # Free ports for what would otherwise collide with another Ray on this machine.
                cmd += (f" --temp-dir={self.ray_tmp} --dashboard-agent-listen-port={self.agent_port}"
                        f" --ray-client-server-port={self.client_port}"
                        f" --metrics-export-port={self.metrics_port}")
            start.append(cmd)
        cfg["head_start_ray_commands"] = start
        self.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return cfg

    def ray(self, args: list[str], log_name: str, timeout: float) -> subprocess.CompletedProcess:
        log = self.logs / log_name
        t0 = time.time()
        with open(log, "a") as f:
            f.write(f"$ ray {' '.join(args)}\n")
            f.flush()
            try:
                proc = subprocess.run([str(BIN / "ray"), *args], stdout=f, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=_ray_env(), cwd=REPO,
                                      timeout=timeout)
            except subprocess.TimeoutExpired:
                proc = subprocess.CompletedProcess(args, 124)
                f.write(f"\n(timed out after {timeout:.0f} s)\n")
        self.timings[log_name] = self.timings.get(log_name, 0.0) + time.time() - t0
        return proc

    def up(self) -> None:
        self.write_config()
        self.up_done = True  # from here on, teardown runs `ray down`
        proc = self.ray(["up", "-y", "--no-config-cache", "--disable-usage-stats", str(self.config)],
                        "ray-up.log", timeout=900)
        if proc.returncode != 0:
            pytest.fail(f"`ray up` failed ({proc.returncode}):\n{self.diagnostics('ray-up.log')}")
        deadline = time.time() + 180
        while time.time() < deadline:
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=5) as r:
                    if r.status == 200:
                        return
            time.sleep(1)
        pytest.fail(f"the dashboard (job API) never answered at {self.dashboard}:\n"
                    f"{self.diagnostics('ray-up.log')}")

    def addresses(self) -> dict[str, set[str]]:
        """Node and GCS addresses on the command lines of this cluster's processes."""
        sys.path.insert(0, str(HERE))
        try:
            import scoped_ray_stop
        finally:
            sys.path.remove(str(HERE))
        found: dict[str, set[str]] = {}
        for pid in scoped_ray_stop.matching([str(self.ray_tmp)]):
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                for key, value in re.findall(r"--(node[-_]ip[-_]address|gcs[-_]address)[= ](\S+)", cmdline):
                    found.setdefault(key.replace("_", "-"), set()).add(value.rsplit(":", 1)[0]
                                                                          if "gcs" in key else value)
        return found

    def diagnostics(self, *logs: str) -> str:
        parts = [f"--- {name} (tail) ---\n{_tail(self.logs / name, 60)}" for name in logs]
        parts.append(f"--- sshd.log (tail) ---\n{_tail(self.logs / 'sshd.log', 15)}")
        session = self.ray_tmp / "session_latest" / "logs"
        for name in ("dashboard.log", "gcs_server.out", "raylet.out", "monitor.log"):
            if (session / name).exists():
                parts.append(f"--- {session / name} (tail) ---\n{_tail(session / name, 15)}")
        parts.append(f"(everything is kept in {self.tmp})")
        return "\n".join(parts)

    def teardown(self) -> list[str]:
        """`ray down`, then whatever is left of this cluster, sshd and the provider's state file.
        Every step runs even when an earlier one fails; the problems come back as messages."""
        problems: list[str] = []

        def step(what: str, fn) -> None:
            try:
                fn()
            except Exception as e:  # noqa: BLE001 — keep tearing down
                problems.append(f"{what}: {type(e).__name__}: {e}")

        def ray_down() -> None:
            proc = self.ray(["down", "-y", str(self.config)], "ray-down.log", timeout=300)
            if proc.returncode != 0:
                problems.append(f"`ray down` exited {proc.returncode}:\n{_tail(self.logs / 'ray-down.log')}")

        def leftovers() -> None:
            # Whatever `ray down` left (it ran the scoped `ray stop` on the head already).
            sys.path.insert(0, str(HERE))
            try:
                import scoped_ray_stop
            finally:
                sys.path.remove(str(HERE))
            left = scoped_ray_stop.stop(self.markers())
            if left and self.up_done:
                problems.append(f"{left} processes of the cluster were still running after `ray down`")

        def stop_sshd() -> None:
            if self.sshd is not None and self.sshd.poll() is None:
                self.sshd.terminate()
                try:
                    self.sshd.wait(10)
                except subprocess.TimeoutExpired:
                    self.sshd.kill()
                    self.sshd.wait(5)

        def provider_state() -> None:
            # The local provider's state for this cluster name (ray/autoscaler/_private/local/config.py).
            from ray.autoscaler._private.local.config import get_lock_path, get_state_path

            for p in (get_state_path(self.name), get_lock_path(self.name)):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(p)
            # `ray up`/`ray down` cache the resolved config as $TMPDIR/ray-config-<hash>.
            for p in Path(tempfile.gettempdir()).glob("ray-config-*"):
                with contextlib.suppress(OSError):
                    if f'"{self.name}"' in p.read_text(errors="replace"):
                        p.unlink()

        if self.up_done:
            step("ray down", ray_down)
        step("leftover processes", leftovers)
        step("sshd", stop_sshd)
        step("provider state", provider_state)
        return problems


def _job_status(cluster: LoopbackCluster, job_id: str) -> str:
    """The job's status through the job API (and `ray job status` into the logs, as an operator sees it)."""
    from ray.job_submission import JobSubmissionClient

    cluster.ray(["job", "status", "--address", cluster.dashboard, job_id], "job-status.log", timeout=120)
    try:
        return str(JobSubmissionClient(cluster.dashboard).get_job_status(job_id).value)
    except Exception as e:  # noqa: BLE001 — reported with the logs
        return f"UNKNOWN ({type(e).__name__}: {e})"


def _labels_by_experiment(runs: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for db in runs.rglob("labels.sqlite"):
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            for experiment, n in con.execute("SELECT experiment, COUNT(*) FROM labels GROUP BY experiment"):
                counts[experiment] = counts.get(experiment, 0) + n
        finally:
            con.close()
    return counts


def _steps_by_run(runs: Path) -> dict[str, int]:
    from learner.metrics import read_csv

    steps = {}
    for csv in runs.rglob("metrics.csv"):
        rows = read_csv(csv.parent)
        steps[csv.parent.name] = int(max((r["env_steps"] for r in rows), default=0))
    return steps


@pytest.fixture
def cluster():
    c = LoopbackCluster()
    try:
        yield c
    finally:
        problems = c.teardown()
    if problems:
        pytest.fail("teardown: " + "\n".join(problems) + f"\n(logs in {c.logs})")
    if c.passed:
        shutil.rmtree(c.tmp, ignore_errors=True)
    else:
        print(f"\ncluster test: logs and run directories kept in {c.tmp}")


def test_ray_up_submit_games_ray_down(cluster: LoopbackCluster) -> None:
    from learner.experiment import default_name

    games = default_games()
    t0 = time.time()
    cluster.start_sshd()
    cluster.up()
    t_up = time.time() - t0
    assert (cluster.home / "rlhp-deploy" / "submit.sh").exists(), "file_mounts did not arrive"
    assert (cluster.home / "ray_bootstrap_config.yaml").exists(), "ray up wrote no bootstrap config"
    addresses = cluster.addresses()
    assert addresses.get("node-ip-address") == {"127.0.0.1"}, f"Ray left loopback: {addresses}"
    assert addresses.get("gcs-address") == {"127.0.0.1"}, f"Ray left loopback: {addresses}"

    job_id = f"rlhp-cluster-test-{os.getpid()}"
    args = [str(REPO / "deploy" / "submit.sh"), "--address", cluster.dashboard, "--id", job_id,
            "--runs-dir", str(cluster.runs)]
    for g in games:
        args += ["--env", g]
    args += ["--", "--preset", "smoke", "--set", "run.initial_label_timeout_s=600"]
    t1 = time.time()
    log = cluster.logs / "job.log"
    with open(log, "w") as f:
        try:
            proc = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=_ray_env(), cwd=REPO, timeout=1800)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = 124
    t_job = time.time() - t1
    status = _job_status(cluster, job_id)
    if status != "SUCCEEDED":
        cluster.ray(["job", "logs", "--address", cluster.dashboard, job_id], "job-logs.log", timeout=120)
        pytest.fail(f"job {job_id} ({', '.join(games)}) ended {status} (submit.sh exit {rc}):\n"
                    + cluster.diagnostics("job.log", "job-logs.log"))

    steps, labels = _steps_by_run(cluster.runs), _labels_by_experiment(cluster.runs)
    report = f"steps by run {steps}, labels by experiment {labels}"
    for g in games:
        name = default_name(g)
        game_steps = [n for run, n in steps.items() if name in run]
        game_labels = [n for exp, n in labels.items() if name in exp]
        assert game_steps and max(game_steps) > 0, f"{g}: no env steps in metrics.csv; {report}"
        assert game_labels and max(game_labels) > 0, f"{g}: no labels in labels.sqlite; {report}"
    cluster.passed = True
    print(f"\n{len(games)} game(s) {games}: ray up {t_up:.0f} s, job {t_job:.0f} s; {report}")
