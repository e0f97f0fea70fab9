"""Label sets (`rlhp labels export|import`): provenance kept, segments bit for bit, all or nothing,
repeatable, forwarded to the reward model after import, and bad files refused line by line."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from query_service.config import QueryConfig
from query_service.core import QueryService
from query_service.labelsets import export_labels, import_labels, main
from query_service.store import Store
from query_service.testing import FakeClock, open_experiment, segment_records
from reward_service.types import AddResult
from rlhp.types import InvalidRequest, Preference


class Recorder:
    """A reward backend that keeps what it is sent."""

    def __init__(self) -> None:
        self.comparisons: dict[str, tuple[str, str, Preference]] = {}
        self.segments: dict[str, np.ndarray] = {}

    def add_comparisons(self, segments, comparisons):
        self.segments.update({s.id: s.observations for s in segments})
        new = [c for c in comparisons if c.id not in self.comparisons]
        self.comparisons.update({c.id: (c.left_id, c.right_id, c.answer) for c in comparisons})
        return AddResult(len(new), len(comparisons) - len(new), 0, len(self.comparisons))

    def disagreement(self, segments, pairs):
        raise ConnectionError("not used")


def labelled_run(path, n_labels=3):
    clock = FakeClock()
    svc = QueryService(path, QueryConfig.smoke(initial_labels=0, selection="random"), clock=clock, seed=0)
    prod, alice = open_experiment(svc)
    svc.report_progress(prod, "Hop", 10**9, env_id="Hopper-v5", goal="hop forward")
    svc.select_once()
    answers = [Preference.LEFT, Preference.RIGHT, Preference.EQUAL, Preference.INCOMPARABLE]
    for i in range(n_labels):
        clock.t += 10
        svc.submit(alice, svc.lease(alice).query.id, answers[i % 4], seconds=1.5 + i)
    return svc


def export_text(store, **kw) -> str:
    buf = io.StringIO()
    export_labels(store, buf, **kw)
    return buf.getvalue()


def test_export_keeps_provenance_and_import_restores_labels_and_segments(tmp_path):
    src = labelled_run(tmp_path / "a")
    text = export_text(src.store)
    lines = [json.loads(x) for x in text.splitlines()]
    labels = [x for x in lines if x["kind"] == "label"]
    shown = {i for x in labels for i in (x["left_id"], x["right_id"])}
    assert lines[0]["kind"] == "header" and lines[0]["labels"] == 3 and lines[0]["segments"] == len(shown)
    assert sorted(x["id"] for x in lines if x["kind"] == "segment") == sorted(shown)  # each once
    assert [x["answer"] for x in labels] == ["LEFT", "RIGHT", "EQUAL"]
    first = labels[0]
    assert first["labeler"] == "alice" and first["seconds"] == 1.5 and first["goal"] == "hop forward"
    assert first["env_id"] == "Hopper-v5" and first["experiment"] == "Hop" and first["created"] == 1_000_010.0
    assert first["model_version"] == 0 and first["left_id"].startswith("s") and first["right_id"].startswith("s")
    # every segment comes before the first label that shows it
    seen = set()
    for x in lines[1:]:
        if x["kind"] == "segment":
            seen.add(x["id"])
        else:
            assert {x["left_id"], x["right_id"]} <= seen

    dst = Store(tmp_path / "b")
    counts = import_labels(dst, text.splitlines())
    assert counts == dict(labels=3, labels_skipped=0, segments=len(shown), segments_present=0)
    with src.store.read() as c:
        want = [tuple(r) for r in c.execute("SELECT query_id, left_id, right_id, answer, labeler, seconds, created, "
                                            "model_version, goal FROM labels ORDER BY query_id")]
    with dst.read() as c:
        got = [tuple(r) for r in c.execute("SELECT query_id, left_id, right_id, answer, labeler, seconds, created, "
                                           "model_version, goal FROM labels ORDER BY query_id")]
        assert c.execute("SELECT COUNT(*) FROM labels WHERE forwarded=0").fetchone()[0] == 3
    assert got == want
    ids = [i for r in want for i in r[1:3]]
    a, b = src.store.load_segments("Hop", ids), dst.load_segments("Hop", ids)
    for sid in ids:
        assert np.array_equal(a[sid].observations, b[sid].observations)
        assert np.array_equal(a[sid].true_rewards, b[sid].true_rewards)
    # again: nothing new, nothing lost
    assert import_labels(dst, text.splitlines()) == dict(labels=0, labels_skipped=3, segments=0,
                                                         segments_present=len(shown))
    dst.close()

    # the run's query service forwards the imported labels to its reward model
    recorder = Recorder()
    svc = QueryService(tmp_path / "b", QueryConfig.smoke(initial_labels=0), reward=recorder, seed=0)
    assert svc.forward_once() == 3 and svc.unforwarded() == 0
    assert {q: v[2] for q, v in recorder.comparisons.items()} == {r[0]: Preference(r[3]) for r in want}
    assert np.array_equal(recorder.segments[ids[0]], a[ids[0]].observations)
    assert svc.stats().experiments[0].labels == 3
    svc.close()
    src.close()


def test_import_is_all_or_nothing_and_says_which_line_is_wrong(tmp_path):
    src = labelled_run(tmp_path / "a")
    lines = export_text(src.store).splitlines()
    src.close()
    dst = Store(tmp_path / "b")

    def refused(bad_lines, match):
        with pytest.raises(InvalidRequest, match=match):
            import_labels(dst, bad_lines)
        with dst.read() as c:
            assert c.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 0
            assert c.execute("SELECT COUNT(*) FROM segments").fetchone()[0] == 0

    refused(lines[1:], "line 1: not an rlhp label set")  # no header
    refused([], "empty")
    refused([lines[0], "{not json"], "line 2: not JSON")
    refused(lines[:-1] + [lines[-1].replace('"EQUAL"', '"SIDEWAYS"')], f"line {len(lines)}: .*SIDEWAYS")
    no_segments = [x for x in lines if json.loads(x)["kind"] != "segment"]
    refused(no_segments, "neither in the file nor in experiment 'Hop'")
    seg_line = next(i for i, x in enumerate(lines) if json.loads(x)["kind"] == "segment")
    broken = json.loads(lines[seg_line])
    broken["data"] = "###"
    refused(lines[:seg_line] + [json.dumps(broken)] + lines[seg_line + 1:], f"line {seg_line + 1}: data is not")
    refused([json.dumps({**json.loads(lines[0]), "version": 9})] + lines[1:], "version 9")
    two = lines[:-1] + [json.dumps({**json.loads(lines[-1]), "experiment": "Other"})]
    with pytest.raises(InvalidRequest, match="holds 2 experiments"):
        import_labels(dst, two, experiment="Renamed")

    # shapes must agree with what the experiment already holds
    other = segment_records(2, obs_dim=7, prefix="x")
    with dst.write() as c:
        Store.agree_shapes(c, {"Hop": ("Hopper-v5", "7:float32", "1")}, 0, 0.0)
        Store.insert_segment(c, Store.segment_row(other[0], 0.0))
    with pytest.raises(InvalidRequest, match="stores observations 7:float32"):
        import_labels(dst, lines)
    # under another name it goes in
    assert import_labels(dst, lines, experiment="Hop2")["labels"] == 3
    dst.close()


def test_the_command_exports_imports_and_refuses_without_a_traceback(tmp_path, capsys):
    src = labelled_run(tmp_path / "a", n_labels=2)
    src.close()
    out = tmp_path / "labels.jsonl"
    assert main(["export", "--run-dir", str(tmp_path / "a"), "--out", str(out)]) == 0
    assert "exported 2 label(s) and " in capsys.readouterr().err
    assert main(["import", str(out), "--run-dir", str(tmp_path / "b"), "--experiment", "hop-again"]) == 0
    assert "imported 2 label(s)" in capsys.readouterr().out
    with Store(tmp_path / "b").read() as c:
        assert {r[0] for r in c.execute("SELECT experiment FROM labels")} == {"hop-again"}
    out.write_text(out.read_text().replace('"kind": "header"', '"kind": "hdr"'))
    assert main(["import", str(out), "--run-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "line 1: not an rlhp label set" in err and "nothing was imported" in err and "Traceback" not in err
    assert main(["export", "--run-dir", str(tmp_path / "nowhere")]) == 1
    assert main(["import", str(tmp_path / "missing.jsonl"), "--run-dir", str(tmp_path / "c")]) == 1
    inspect = tmp_path / "inspect.jsonl"
    assert main(["export", "--run-dir", str(tmp_path / "a"), "--out", str(inspect), "--no-segments"]) == 0
    assert {json.loads(x)["kind"] for x in inspect.read_text().splitlines()} == {"header", "label"}
