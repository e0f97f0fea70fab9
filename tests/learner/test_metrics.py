"""metrics.csv keeps one header: a run resumed by a version with more columns is rewritten with the
new header, old rows padded, so appended rows line up."""

from __future__ import annotations

import csv

from learner.metrics import COLUMNS, MetricsWriter


def test_resume_upgrades_an_older_header(tmp_path):
    old = [c for c in COLUMNS if c not in ("policy_corr", "step_corr")]
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=old)
        w.writeheader()
        w.writerow({c: 1 for c in old})
    m = MetricsWriter(tmp_path, resume=True, tensorboard=False, stream=None)
    m.write({c: 2 for c in COLUMNS})
    m.close()
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(COLUMNS)
    assert rows[0]["iteration"] == "1" and rows[0]["policy_corr"] == ""
    assert rows[1]["policy_corr"] == "2" and rows[1]["step_corr"] == "2"


def test_resume_drops_a_column_that_is_gone(tmp_path):
    # runs written before `disagreement` (always empty) was dropped from the columns
    old = list(COLUMNS[:12]) + ["disagreement"] + list(COLUMNS[12:])
    assert "disagreement" not in COLUMNS
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=old)
        w.writeheader()
        w.writerow({c: 1 for c in old})
    m = MetricsWriter(tmp_path, resume=True, tensorboard=False, stream=None)
    m.write({c: 2 for c in COLUMNS})
    m.close()
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(COLUMNS)
    assert [r["reward_version"] for r in rows] == ["1", "2"] and [r["segments_sent"] for r in rows] == ["1", "2"]
