"""Fixtures of the query service tests: a standing clock and a core (smoke config, no initial batch)."""

from __future__ import annotations

import pytest

from query_service.config import QueryConfig
from query_service.core import QueryService
from query_service.testing import FakeClock


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def svc(tmp_path, clock):
    s = QueryService(tmp_path / "run", QueryConfig.smoke(initial_labels=0), clock=clock, seed=0)
    yield s
    s.close()
