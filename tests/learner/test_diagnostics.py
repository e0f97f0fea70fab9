"""Reward-fit metrics over the query service's real SQLite store, asked through the core's methods:
corr over all recent segments, over the policy's own segments, and per step — they tell apart a
model that ranks random-policy segments well from one that ranks the policy's own behaviour well."""

from __future__ import annotations

import math

import numpy as np

from learner.diagnostics import part_weights, pearson, segment_metrics
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


def _hopper_terms(rng, n=2000):
    survive = (rng.random(n) < 0.3).astype(float)
    forward = rng.normal(0.5, 1.0, n)
    ctrl = -1e-3 * rng.random(n)
    return {"reward_survive": survive, "reward_forward": forward, "reward_ctrl": ctrl}


def test_part_weights_are_one_for_a_model_that_pays_every_term_alike():
    rng = np.random.default_rng(0)
    parts = _hopper_terms(rng)
    true = sum(parts.values())
    w = part_weights(2.5 * true + 0.3 + 0.01 * rng.normal(size=len(true)), parts, true)
    assert set(w) == {"weight_survive", "weight_forward", "weight_ctrl"}
    assert abs(w["weight_survive"] - 1.0) < 0.05 and abs(w["weight_forward"] - 1.0) < 0.05


def test_part_weights_show_a_term_the_model_underpays():
    rng = np.random.default_rng(1)
    parts = _hopper_terms(rng)
    true = sum(parts.values())
    pred = 0.5 * parts["reward_survive"] + 2.0 * parts["reward_forward"] + 2.0 * parts["reward_ctrl"]
    w = part_weights(pred, parts, true)
    assert abs(w["weight_survive"] / w["weight_forward"] - 0.25) < 0.01
    assert pearson(pred, true) > 0.9  # a high corr, and still a term paid at a quarter


def test_part_weights_are_empty_when_the_terms_are_not_the_reward_or_do_not_vary():
    rng = np.random.default_rng(2)
    parts = _hopper_terms(rng)
    true = sum(parts.values())
    assert part_weights(true, parts, true + 1.0) == {}  # the terms do not add up to the reward
    parts["reward_survive"] = np.ones(len(true))
    assert part_weights(true, parts, sum(parts.values())) == {}  # a constant term
    assert part_weights(np.zeros(0), {}, np.zeros(0)) == {}


def test_part_weights_are_empty_rather_than_failing_on_nan_cancelling_or_twin_terms():
    rng = np.random.default_rng(3)
    parts = _hopper_terms(rng)
    true = sum(parts.values())
    bad = dict(parts, reward_forward=parts["reward_forward"].copy())
    bad["reward_forward"][5] = np.nan
    assert part_weights(true, bad, true) == {}
    pred = true.copy()
    pred[7] = np.inf
    assert part_weights(pred, parts, true) == {}
    x = rng.normal(size=len(true))  # two terms that cancel: the true reward is constant
    assert part_weights(x, {"reward_a": x, "reward_b": 1.0 - x}, np.ones(len(x))) == {}
    # twin terms cannot be told apart
    assert part_weights(2 * x, {"reward_a": x / 2, "reward_b": x / 2}, x) == {}
