"""One local Ray cluster (loopback only) for all learner tests: starting Ray costs ~10 s and can
time out on a loaded 2-core machine, so tests share it. `Trainer` leaves a running Ray alone."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from learner.runs import init_local_ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        init_local_ray(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                       log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
