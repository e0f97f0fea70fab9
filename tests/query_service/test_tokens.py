"""Tokens a process keeps for itself across restarts: reused while valid, never replacing another."""

from __future__ import annotations

import stat

import pytest

from query_service.core import QueryService
from query_service.tokens import kept_token, new_token
from rlhp.wire import FailedPrecondition, Unauthenticated


def test_creating_a_token_never_replaces_an_existing_one(tmp_path):
    svc = QueryService(tmp_path)
    try:
        alice = svc.create_token("alice", "labeler")
        with pytest.raises(FailedPrecondition, match="alice"):
            svc.create_token("alice", "labeler")
        assert svc.authenticate(alice).name == "alice"  # still valid
        rotated = svc.create_token("alice", "labeler", replace=True)
        with pytest.raises(Unauthenticated):
            svc.authenticate(alice)
        assert svc.authenticate(rotated).name == "alice"
        # new_token picks a free name instead
        assert svc.authenticate(new_token(svc, "alice", "labeler")).name == "alice-2"
        assert svc.authenticate(new_token(svc, "alice", "labeler")).name == "alice-3"
        assert svc.authenticate(rotated).name == "alice"
    finally:
        svc.close()


def test_kept_token_is_reused_after_a_restart_and_replaced_only_when_invalid(tmp_path):
    path = tmp_path / "tokens" / "human.token"
    svc = QueryService(tmp_path)
    first = kept_token(svc, path, "human", "labeler", ["pong"])
    assert path.read_text().strip() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    svc.close()

    svc = QueryService(tmp_path)  # a restart (resume) of the same run
    try:
        assert kept_token(svc, path, "human", "labeler", ["pong"]) == first
        # another scope or role: a new token under a free name; the first one keeps working
        other = kept_token(svc, path, "human", "labeler", ["pong", "breakout"])
        assert other != first and svc.authenticate(other).name == "human-2"
        assert svc.authenticate(first).name == "human"
        # revoked: replaced by a new one, the revoked name stays revoked
        svc.revoke_token("human-2")
        third = kept_token(svc, path, "human", "labeler", ["pong", "breakout"])
        assert svc.authenticate(third).name == "human-3"
        with pytest.raises(Unauthenticated, match="revoked"):
            svc.authenticate(other)
        # a file from another database (or garbage): a new token, nothing else touched
        path.write_text("not-a-token\n")
        fourth = kept_token(svc, path, "human", "labeler", ["pong", "breakout"])
        assert svc.authenticate(fourth).name == "human-4" and svc.authenticate(third).name == "human-3"
    finally:
        svc.close()
