"""`rlhp train` starts its local Ray through `learner.runs.init_local_ray`: a start that times out
(seen in CI on 2 cores: the GCS had not published its port within Ray's 30 s) is shut down and
tried once more, and Ray is given 90 s to publish the GCS port unless the operator set the wait."""

from __future__ import annotations

import os

import pytest

from learner import runs


def test_a_failed_start_is_shut_down_and_tried_again(monkeypatch):
    # ray.init is replaced (Ray itself is started this way by every run of the suite; the shared
    # `ray_local` cluster must not be touched here), so this checks the retry, not Ray
    import ray

    calls, shutdowns = [], []

    def flaky_init(*args, **kwargs):
        calls.append(kwargs.get("address"))
        if len(calls) == 1:  # what Ray raised in CI
            raise RuntimeError("Timed out waiting for file /tmp/ray/session_x/gcs_server_port_y")

    monkeypatch.setattr(ray, "init", flaky_init)
    monkeypatch.setattr(runs.time, "sleep", lambda s: None)
    monkeypatch.setattr(ray, "shutdown", lambda: shutdowns.append(len(calls)))
    monkeypatch.delenv("RAY_gcs_server_port_wait_time_s", raising=False)
    runs.init_local_ray(num_cpus=1, include_dashboard=False)
    assert calls == ["local", "local"] and shutdowns == [1]  # shut down after the failed start only
    assert os.environ["RAY_gcs_server_port_wait_time_s"] == runs.GCS_WAIT_S


def test_the_last_failure_is_raised(monkeypatch):
    import ray

    calls = []

    def failing_init(*args, **kwargs):
        calls.append(1)
        raise Exception("The current node timed out during startup.")  # Ray's own words and type

    monkeypatch.setattr(ray, "init", failing_init)
    monkeypatch.setattr(runs.time, "sleep", lambda s: None)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setenv("RAY_gcs_server_port_wait_time_s", "45")  # the operator's choice is kept
    with pytest.raises(RuntimeError, match=r"timed out during startup\. \(2 attempts\)"):
        runs.init_local_ray(attempts=2)
    assert len(calls) == 2 and os.environ["RAY_gcs_server_port_wait_time_s"] == "45"
