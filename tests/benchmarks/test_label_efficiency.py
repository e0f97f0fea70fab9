"""The label-efficiency benchmark's bookkeeping (no training): how runs become the docs table."""

from __future__ import annotations

import math

import pytest


def _run(arm: str, steps: int, returns: list[float], seed: int = 1, labels: int = 0) -> dict:
    # an evaluation every other iteration (NaN between, as in a true arm), so equal returns in a row
    # stay separate evaluations; a run's final is the mean of its last three
    n, nan = len(returns), float("nan")
    rows = [dict(env_steps=steps * (i + 1) / n - d, true_return=r if d == 0 else nan, labels=labels)
            for i, r in enumerate(returns) for d in (1, 0)]
    return dict(task="hopper", arm=arm, seed=seed, steps=steps, wall_s=10.0, rows=rows)


def test_final_is_the_mean_of_the_last_tenth_of_the_evaluations_and_at_least_three(le):
    assert le.final([dict(true_return=float(i)) for i in range(40)]) == pytest.approx(37.5)
    assert le.final([dict(true_return=float(i)) for i in range(20)]) == pytest.approx(18.0)
    assert le.final([dict(true_return=float("nan")), dict(true_return=3.0)]) == 3.0
    assert math.isnan(le.final([dict(true_return=float("nan"))]))  # no evaluation at all


def test_final_counts_each_evaluation_once_in_both_kinds_of_arm(le):
    # 1,000-step episodes, 8 envs: an evaluation every 4th iteration. A true arm reports NaN in
    # between, an rlhp arm repeats its last mean; both must score the same evaluations.
    evals = [100.0, 200.0, 300.0, 400.0, 500.0]
    true = [dict(true_return=v if i % 4 == 3 else float("nan")) for i, v in enumerate(x for x in evals for _ in range(4))]
    rlhp = [dict(true_return=v) for v in evals for _ in range(4)]
    assert le.final(true) == le.final(rlhp) == pytest.approx(400.0)


def test_table_keeps_step_budgets_apart_and_scores_against_the_same_budget(le):
    runs = [
        _run("true", 1000, [0.0] * 7 + 3 * [100.0]),     # final 100 at 1k steps
        _run("true", 2000, [0.0] * 7 + 3 * [400.0]),     # final 400 at 2k steps
        _run("rlhp-700", 2000, [0.0] * 7 + 3 * [200.0], labels=700),
        _run("rlhp-700", 2000, [0.0] * 7 + 3 * [600.0], seed=2, labels=690),
    ]
    table = le.mujoco_table(runs)
    rows = [line for line in table.splitlines() if line.startswith("| hopper")]
    assert len(rows) == 3, table  # true@1k, true@2k, rlhp-700@2k: budgets never averaged together
    rlhp = next(r for r in rows if "rlhp-700" in r)
    assert "| 2 |" in rlhp and "400.0 (200.0–600.0)" in rlhp
    assert "| 100% |" in rlhp  # 400 against the 2k true arm's 400, not the 1k arm's 100
    assert "| 695 |" in rlhp
    assert "**100%** of true-reward PPO" in table


def test_an_arm_with_a_set_is_scored_against_the_true_arm_run_with_the_same_set(le):
    runs = [
        _run("true", 2000, [0.0] * 7 + 3 * [400.0]),
        _run("true-pen2", 2000, [0.0] * 7 + 3 * [100.0]),      # the same env change on the true reward
        _run("rlhp-700-pen2", 2000, [0.0] * 7 + 3 * [100.0], labels=700),
        _run("rlhp-700-beta1", 2000, [0.0] * 7 + 3 * [200.0], labels=700),  # teacher knob: plain true arm
    ]
    assert le._reference("rlhp-700-pen2", runs) == "true-pen2"
    assert le._reference("rlhp-700-beta1", runs) == "true"
    assert le._reference("rlhp-700", runs) == "true"
    table = le.mujoco_table(runs)
    pen = next(r for r in table.splitlines() if "rlhp-700-pen2" in r)
    beta = next(r for r in table.splitlines() if "rlhp-700-beta1" in r)
    assert "| 100% |" in pen and "| 50% |" in beta
    true_pen = next(r for r in table.splitlines() if r.startswith("| hopper | true-pen2"))
    assert "| – | – |" in true_pen  # a true arm has no percentage and no labels


def test_score_is_the_share_of_the_true_arms_gain_over_the_initial_policy(le):
    # Reacher-like: returns negative; true arm −40 → −10, rlhp −40 → −25: half the gain
    runs = [_run("true", 1000, [-40.0] + [-30.0] * 6 + [-10.0] * 3),
            _run("rlhp-350", 1000, [-40.0] + [-30.0] * 6 + [-25.0] * 3, labels=350)]
    row = next(r for r in le.mujoco_table(runs).splitlines() if "rlhp-350" in r)
    assert "| -40.0 | 50% |" in row, row


def test_summary_adds_the_median_and_the_capped_mean_over_tasks(le):
    runs = []
    for task, rlhp in (("hopper", 50.0), ("walker2d", 100.0), ("swimmer", 900.0)):
        for arm, final in (("true", 100.0), ("rlhp-350", rlhp)):
            run = _run(arm, 1000, [0.0] * 7 + 3 * [final], labels=350)
            run["task"] = task
            runs.append(run)
    table = le.mujoco_table(runs)
    # 50%, 100%, 900%: mean 350%, median 100%, capped (50 + 100 + 100) / 3 = 83%
    assert "**350%** of true-reward PPO's gain (median 100%; capped at 100% per task, 83%)." in table, table


def test_the_standardised_true_arm_is_scored_against_true_and_rlhp_also_against_it(le):
    runs = [_run("true", 1000, [0.0] * 7 + 3 * [100.0]),
            _run("true-std", 1000, [0.0] * 7 + 3 * [200.0]),           # the reward's scale alone: 200%
            _run("rlhp-700", 1000, [0.0] * 7 + 3 * [150.0], labels=700),
            _run("rlhp-700-beta1", 1000, [0.0] * 7 + 3 * [50.0], labels=700)]
    assert le._reference("rlhp-700", runs) == "true"  # the main score stays against plain true
    table = le.mujoco_table(runs)
    std = next(r for r in table.splitlines() if r.startswith("| hopper | true-std"))
    rlhp = next(r for r in table.splitlines() if r.startswith("| hopper | rlhp-700 "))
    assert "| 200% | – |" in std and "| 150% |" in rlhp, table
    assert "**rlhp-700** against the stronger of `true` and `true-std` per task: mean over 1 tasks " \
           "(hopper 75%): **75%**." in table, table
    assert "rlhp-700-beta1** against" in table  # a teacher knob keeps the plain true arm, so it gets the line too


def test_summary_scores_the_preset_variant_in_place_of_the_plain_arm_where_the_preset_uses_it(le):
    runs = []
    for task, arms in (("reacher", (("rlhp-700", 50.0), ("rlhp-700-mix2", 100.0))),
                       ("hopper", (("rlhp-700", 60.0), ("rlhp-700-mix2", 10.0))), ("walker2d", (("rlhp-700", 80.0),))):
        for arm, final in (("true", 100.0), *arms):
            run = _run(arm, 1000, [0.0] * 7 + 3 * [final], labels=700)
            run["task"] = task
            runs.append(run)
    table = le.mujoco_table(runs)
    assert le.PRESET_VARIANT == "mix2"
    assert "**rlhp-700**: mean over 3 of 3 tasks (hopper, reacher, walker2d): **63%**" in table, table
    # reacher's preset has the scales: its mix2 run (100%) replaces the plain one (50%); hopper's
    # preset has none, so its mix2 run (10%) is not the preset's; walker2d has no mix2 run
    assert "**rlhp-700 as the preset runs it now** (`-mix2` on reacher), of true-reward PPO's gain: mean over " \
           "3 tasks (hopper 60%, reacher 100%, walker2d 80%): **80%**" in table, table
    assert "rlhp-700-mix2 as" not in table and "rlhp-350 as" not in table
