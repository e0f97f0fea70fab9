"""Domain types of rlhp.types (no protobuf)."""

from __future__ import annotations


def test_actions_for_the_reward_model_are_decided_in_one_place():
    import numpy as np

    from rlhp.types import model_actions

    assert model_actions(np.array([0, 2, 1])).dtype == np.int64
    a = model_actions(np.array([[-3.0, 0.5], [2.0, -0.25]]), low=np.array([-1.0, -1.0]), high=np.array([1.0, 1.0]))
    assert a.dtype == np.float32 and a.tolist() == [[-1.0, 0.5], [1.0, -0.25]]
    assert model_actions(np.array([5.0], dtype=np.float64)).tolist() == [5.0]  # no bounds, no clip
