"""Bad input, fuzzed, for every RPC of both services (a small run of `benchmarks/fuzz.py`; the
10,000-case table is in docs/reliability.md): each service runs in its own process and must answer
every case with a status that is not UNKNOWN or INTERNAL, never hang or die, and still serve a
valid request afterwards."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))

import fuzz  # noqa: E402


@pytest.mark.parametrize("service", ["reward", "query"])
def test_fuzzed_requests_never_break_a_service(service, tmp_path):
    report = fuzz.run(service, cases=400, seed=11, workdir=tmp_path, check_every=100)
    assert report["cases"] == 400
    assert fuzz.failures(report) == 0, report["bad"]
    assert report["unhealthy_checks"] == 0 and report["healthy_at_end"]
    assert report["tracebacks_in_log"] == 0
    # the cases reached the services' own checks, not only the decoder
    assert report["counts"].get("OK", 0) > 20 and report["counts"].get("INVALID_ARGUMENT", 0) > 100
    # a request over the 64 MiB limit is refused as too large; a long stream is served
    assert any(k.endswith("RESOURCE_EXHAUSTED") for k in report["oversized"])
