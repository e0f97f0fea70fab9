"""The committed rlhp.v1 stubs are exactly what the pinned `proto/generate.sh` produces."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "proto" / "rlhp" / "v1"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _generated_names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(SUFFIXES)}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stubs")
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(["bash", str(ROOT / "proto" / "generate.sh"), str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"proto/generate.sh failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    return out / "rlhp" / "v1"


def test_every_proto_has_stubs(generated):
    protos = sorted(p.stem for p in COMMITTED.glob("*.proto"))
    assert protos, f"no .proto files under {COMMITTED}"
    expected = {stem + suffix for stem in protos for suffix in SUFFIXES}
    assert _generated_names(generated) == expected
    assert _generated_names(COMMITTED) == expected, (
        "committed stubs and .proto files disagree; run `bash proto/generate.sh`")


def test_committed_stubs_match_a_fresh_generation(generated):
    drifted = [name for name in sorted(_generated_names(generated))
               if not (COMMITTED / name).exists()
               or (COMMITTED / name).read_bytes() != (generated / name).read_bytes()]
    assert not drifted, (
        f"stubs drifted from the .proto files: {drifted}; run `bash proto/generate.sh` and commit the result")


def test_no_top_level_proto_module_from_this_repo(tmp_path):
    """`proto` belongs to the proto-plus library; our install must not shadow it.

    Checked in a fresh interpreter started outside the repository, so only the installed
    packages count (pytest's own sys.path tweaks do not)."""
    code = ("import importlib.util, json; s = importlib.util.find_spec('proto'); "
            "print(json.dumps(None if s is None else [s.origin, list(s.submodule_search_locations or [])]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout.strip()
    import json

    found = json.loads(out)
    if found is None:
        return
    origin, locations = found
    for place in [origin or "", *locations]:
        assert not str(Path(place).resolve()).startswith(str(ROOT)), (
            f"a top-level module `proto` is importable from this repository ({place}); "
            "the proto-plus library owns that name")
    assert origin and "site-packages" in origin, f"unexpected `proto` module at {origin}"


def test_rlhp_v1_is_importable_as_installed():
    spec = importlib.util.find_spec("rlhp.v1.reward_pb2")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).resolve() == (COMMITTED / "reward_pb2.py").resolve()
