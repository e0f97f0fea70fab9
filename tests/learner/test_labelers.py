"""The labeler pool of a run: a resumed run hands its labelers the tokens they already hold."""

from __future__ import annotations

import threading

from learner.experiment import TeacherConfig
from learner.labelers import start_labelers
from learner.runs import token_dir
from query_service.core import QueryService


def _pool(run_dir, labelers: str, stop: threading.Event, lines: list[str]):
    svc = QueryService(run_dir)
    token, threads = start_labelers(svc, "127.0.0.1:1", ["pong"], labelers, TeacherConfig(labelers=2), 0,
                                    stop, lines.append, token_dir=token_dir(run_dir))
    return svc, token, threads


def test_resuming_keeps_the_human_labelers_token(tmp_path):
    lines: list[str] = []
    stop = threading.Event()
    svc, first, _ = _pool(tmp_path, "human", stop, lines)
    svc.close()
    svc, again, _ = _pool(tmp_path, "human", stop, lines)  # `rlhp train --resume`
    try:
        assert again == first  # the token printed before still works and is printed again
        assert svc.authenticate(first).name == "human"
        assert sum(f"--token {first}" in line for line in lines) == 2
        assert [r["name"] for r in svc.store.list_labelers()] == ["human"]
    finally:
        svc.close()


def test_resuming_keeps_the_teachers_tokens(tmp_path):
    stop = threading.Event()
    stop.set()  # the teacher threads exit at once
    svc, _, threads = _pool(tmp_path, "synthetic", stop, [])
    for th in threads:
        th.join(timeout=10)
    names = sorted(r["name"] for r in svc.store.list_labelers())
    svc.close()
    svc, _, threads = _pool(tmp_path, "synthetic", stop, [])
    try:
        for th in threads:
            th.join(timeout=10)
        assert names == ["teacher-0", "teacher-1"]
        # no teacher-0-2 ...: the resumed run reused its tokens instead of piling up new names
        assert sorted(r["name"] for r in svc.store.list_labelers()) == names
        assert not any(r["revoked"] for r in svc.store.list_labelers())
    finally:
        svc.close()
