"""The `ray up` configs under deploy/ pass Ray's own validation, and say what the README promises.

Ray validates a config in `ray up` as `prepare_config` (defaults, on-premise node type, setup
command merging) followed by `validate_config` (jsonschema against `ray-schema.json` plus the
node-type checks). Both run here on the raw YAML, without contacting any cloud or machine.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

import ray.autoscaler
from ray.autoscaler._private.util import prepare_config, validate_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CONFIGS = ["aws.yaml", "local.yaml", "local-loopback.yaml"]
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def joined(commands: list[str]) -> str:
    return "\n".join(commands)


@pytest.mark.parametrize("name", CONFIGS)
def test_raw_yaml_matches_ray_schema(name: str) -> None:
    jsonschema.validate(load(name), SCHEMA)


@pytest.mark.parametrize("name", CONFIGS)
def test_prepared_config_validates_like_ray_up(name: str) -> None:
    prepared = prepare_config(load(name))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_schema_catches_a_broken_config() -> None:
    """The validation above is not vacuous: a typo'd field and a bad node type are rejected."""
    bad = load("aws.yaml")
    bad["setup_comands"] = ["echo typo"]
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
    bad = load("aws.yaml")
    bad["head_node_type"] = "nope"
    with pytest.raises(ValueError):
        validate_config(prepare_config(bad))


def test_aws_node_types() -> None:
    cfg = load("aws.yaml")
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "env runners must not be scheduled on the head"
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert len(gpu) == 1 and gpu[0]["min_workers"] >= 1, "one GPU worker type, always up"
    cpu = [t for n, t in types.items() if t is not head and not t["resources"].get("GPU")]
    assert cpu and cpu[0]["min_workers"] == 0 and cpu[0]["max_workers"] > 1, "autoscaled CPU workers"
    assert cfg["max_workers"] >= sum(t.get("max_workers", 0) for t in types.values() if t is not head)


def test_aws_installs_pinned_torch_per_node_kind() -> None:
    cfg = load("aws.yaml")
    prepared = prepare_config(cfg)
    cpu_cmds = joined(prepared["head_setup_commands"]) + joined(prepared["worker_setup_commands"])
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in cpu_cmds
    gpu = next(t for t in cfg["available_node_types"].values() if t["resources"].get("GPU"))
    gpu_cmds = joined(gpu["worker_setup_commands"])
    assert re.search(r"pip install -q torch==2\.13\.0\s*$", gpu_cmds, re.M), "CUDA build (PyPI) on GPU"
    assert "whl/cpu" not in gpu_cmds
    for cmds in (cpu_cmds, gpu_cmds):
        assert "pip install -q -e ~/rlhp" in cmds


@pytest.mark.parametrize("name", ["aws.yaml", "local.yaml"])
def test_cloud_configs_ship_the_repo_and_start_the_dashboard(name: str) -> None:
    cfg = load(name)
    assert cfg["file_mounts"] == {"~/rlhp": "."}
    head = joined(cfg["head_start_ray_commands"])
    assert "ray start --head" in head and "--dashboard-port=8265" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "$RAY_HEAD_IP:6379" in joined(cfg["worker_start_ray_commands"])


def test_pyproject_pins_what_the_configs_promise() -> None:
    pyproject = (DEPLOY.parent / "pyproject.toml").read_text()
    assert '"ray[rllib,default]==2.60.0"' in pyproject
    assert ray.__version__ == "2.60.0"


def test_local_config_lists_machines_by_ip() -> None:
    prepared = prepare_config(load("local.yaml"))
    provider = prepared["provider"]
    assert provider["type"] == "local" and provider["head_ip"] and provider["worker_ips"]
    (node_type,) = prepared["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == len(provider["worker_ips"])


def test_loopback_config_stays_on_loopback_and_installs_nothing() -> None:
    cfg = load("local-loopback.yaml")
    assert cfg["provider"] == {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    assert cfg["auth"]["ssh_user"] == "root"
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands",
                "initialization_commands"):
        assert cfg[key] == [], key
    head = joined(cfg["head_start_ray_commands"])
    assert "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0;" in head, "else ray start leaves loopback"
    for flag in ("--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--port=6379",
                 "--dashboard-port=8265", "--num-cpus=2"):
        assert flag in head, flag
    # What the cluster test patches in is still a valid config.
    patched = copy.deepcopy(cfg)
    patched["auth"]["ssh_proxy_command"] = "nc 127.0.0.1 40022"
    validate_config(prepare_config(patched))
