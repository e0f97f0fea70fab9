"""Reward-fit metrics over the query service's real SQLite store, asked through the core's methods:
corr over all recent segments, over the policy's own segments, and per step — they tell apart a
model that ranks random-policy segments well from one that ranks the policy's own behaviour well."""

from __future__ import annotations

import math

import numpy as np

from learner.diagnostics import pearson, segment_metrics
from query_service.config import QueryConfig
from query_service.core import QueryService
from query_service.types import SegmentRecord


class FirstFeature:
    """A reward backend whose r̂(o, a) is the observation's first entry."""

    def score(self, observations, actions):
        return np.asarray(observations)[:, 0].astype(np.float32), 1


def _segments(rng, n, random_policy, prefix, good):
    out = []
    for i in range(n):
        true = rng.normal(size=10).astype(np.float32)
        obs = rng.normal(size=(10, 3)).astype(np.float32)
        if good:
            obs[:, 0] = true  # the backend's reward is exactly the true one
        out.append(SegmentRecord(id=f"{prefix}{i}", experiment="e", env_id="Hopper-v5", observations=obs,
                                 actions=np.zeros((10, 1), np.float32), true_rewards=true, env_step=i,
                                 fps=20.0, random_policy=random_policy))
    return out


def test_policy_corr_and_step_corr_see_the_policy_segments(tmp_path):
    rng = np.random.default_rng(0)
    with QueryService(tmp_path / "run", QueryConfig.smoke(initial_labels=0), seed=0) as svc:
        prod = svc.create_token("actors", "producer")
        # random-policy segments the model ranks perfectly, then policy segments it cannot rank
        svc.add_segments(prod, _segments(rng, 30, True, "r", good=True))
        svc.add_segments(prod, _segments(rng, 30, False, "p", good=False))
        m = segment_metrics(svc, "e", FirstFeature(), n=60)
        assert m["segment_corr"] > 0.4  # looks fine over everything recent...
        assert abs(m["policy_corr"]) < 0.4 and abs(m["step_corr"]) < 0.2  # ...but not on the policy
        svc.add_segments(prod, _segments(rng, 30, False, "q", good=True))
        m = segment_metrics(svc, "e", FirstFeature(), n=30)
        assert m["policy_corr"] > 0.99 and m["step_corr"] > 0.99
        assert math.isfinite(m["predicted_return"])
    assert math.isnan(pearson(np.ones(5), np.arange(5))) and math.isnan(pearson(np.arange(2), np.arange(2)))
