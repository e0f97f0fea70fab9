"""The labeler pool of a run, shared by both runners (`learner.train`, `learner.multi`): humans
(a labeler token and the command to label with) or synthetic teachers answering through the query
service's gRPC API in threads of the driver, exactly as an outside labeler would.

Tokens: the run keeps the tokens it creates under `<run dir>/tokens/` (`query_service.tokens.
kept_token`), so a resumed run hands its labelers the same token as before and never invalidates
one they hold.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

from learner.runs import TrainError

log = logging.getLogger("rlhp.labelers")


def run_token(qcore: Any, token_dir: Path | None, name: str, role: str, experiments: Sequence[str]) -> str:
    """A token of the run: kept in `token_dir/<name>.token` across resumes (None: a new one each time,
    under a free name)."""
    from query_service.tokens import kept_token, new_token

    if token_dir is None:
        return new_token(qcore, name, role, experiments)
    return kept_token(qcore, Path(token_dir) / f"{name}.token", name, role, experiments)


def start_labelers(qcore: Any, query_address: str, experiments: list[str], labelers: str,
                   teacher_cfg: Any, seed: int, stop: threading.Event, say: Callable[[str], None],
                   teacher_factory: Callable[[int], Any] | None = None,
                   token_dir: Path | None = None) -> tuple[str, list[threading.Thread]]:
    """Start the pool; returns (labeler token for humans, or "", the teacher threads).

    `qcore` is the embedded query service (None when the run uses one elsewhere: then humans label
    there and a synthetic teacher cannot be started here, as it could not make its token)."""
    from query_service.client import QueryClient
    from query_service.teacher import SyntheticTeacher, run_teacher

    if labelers == "human":
        if qcore is None:
            say("labelers: humans, through the query service you gave (--query-address)")
            return "", []
        token = run_token(qcore, token_dir, "human", "labeler", experiments)
        say(f"Label at:  rlhp label --server {query_address} --token {token}")
        say(f"(queries of {', '.join(experiments)}; more tokens: rlhp token create --run-dir "
            f"<run dir> --name NAME)")
        return token, []
    if qcore is None:
        raise TrainError("the synthetic teacher needs the embedded query service (it creates its "
                         "token); with --query-address run `rlhp teacher` next to the service")
    t = teacher_cfg
    threads = []
    for i in range(max(1, t.labelers)):
        token = run_token(qcore, token_dir, f"teacher-{i}", "teacher", experiments)
        if teacher_factory is not None:
            teacher = teacher_factory(i)
        else:
            teacher = SyntheticTeacher(beta=t.beta, mistake_prob=t.mistake_prob,
                                       skip_threshold=t.skip_threshold,
                                       equal_threshold=t.equal_threshold, gamma=t.gamma,
                                       seed=seed * 1000 + i)
        client = QueryClient(query_address, token)

        def loop(client: Any = client, teacher: Any = teacher) -> None:
            try:
                run_teacher(client, teacher, stop, experiments=experiments, poll_seconds=0.1)
            except Exception as e:  # noqa: BLE001 — the run says it waits for labels
                log.error("synthetic teacher stopped: %s", e)
            finally:
                client.close()

        th = threading.Thread(target=loop, name=f"teacher-{i}", daemon=True)
        th.start()
        threads.append(th)
    return "", threads
