"""Labels reach the reward service at least once, across failures and restarts of either side."""

from __future__ import annotations

import pytest

from query_service.config import QueryConfig
from query_service.core import QueryService
from query_service.testing import open_experiment
from reward_service.types import AddResult
from rlhp.wire import Preference


# ------------------------------------------------------------------------------------ forwarding
class FakeReward:
    def __init__(self) -> None:
        self.fail = False
        self.seen: dict[str, Preference] = {}
        self.calls = 0

    def add_comparisons(self, segments, comparisons):
        self.calls += 1
        if self.fail:
            raise ConnectionError("reward service down")
        ids = {s.id for s in segments}
        dup = 0
        for c in comparisons:
            assert c.left_id in ids and c.right_id in ids
            if c.id in self.seen:
                dup += 1
            self.seen[c.id] = c.answer
        return AddResult(len(comparisons) - dup, dup, 0, len(self.seen))

    def disagreement(self, segments, pairs):
        raise ConnectionError("reward service down")


def test_forwarding_is_at_least_once_and_survives_restarts(tmp_path, clock):
    cfg = QueryConfig.smoke(initial_labels=0)
    fake = FakeReward()
    svc = QueryService(tmp_path, cfg, reward=fake, clock=clock, seed=0)
    prod, alice = open_experiment(svc)
    svc.report_progress(prod, "Hop", 10**9)
    assert svc.select_once() == cfg.queue_target  # disagreement failed: random fallback
    assert svc.selection_fallbacks == 1
    for _ in range(3):
        svc.submit(alice, svc.lease(alice).query.id, Preference.LEFT)
    fake.fail = True
    with pytest.raises(ConnectionError):
        svc.forward_once()
    assert svc.unforwarded() == 3
    svc.close()  # the query service restarts; nothing forwarded yet
    svc = QueryService(tmp_path, cfg, reward=fake, clock=clock, seed=0)
    fake.fail = False
    assert svc.forward_once() == 3 and svc.unforwarded() == 0
    assert set(fake.seen.values()) == {Preference.LEFT}
    assert svc.stats().experiments[0].labels_forwarded == 3
    # a re-send (e.g. crash between call and mark) is harmless: the reward side counts duplicates
    assert svc.reforward() == 3
    assert svc.forward_once() == 3 and svc.forward_duplicates == 3 and len(fake.seen) == 3
    # the background thread retries with backoff until it gets through
    fake.fail = True
    svc.start()
    svc.submit(alice, svc.lease(alice).query.id, Preference.RIGHT)
    import time
    deadline = time.time() + 10
    while svc.forward_failures < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert svc.forward_failures >= 2 and svc.unforwarded() == 1
    fake.fail = False
    while svc.unforwarded() and time.time() < deadline:
        time.sleep(0.05)
    assert svc.unforwarded() == 0 and len(fake.seen) == 4
    svc.close()
