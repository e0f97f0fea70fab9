"""Tokens a process creates for itself and keeps across restarts (a run's labelers and actors, the
standalone service's producer).

Only hashes are stored in the database, so the plain token of an earlier start can only come
from a file the process wrote then. `kept_token` reuses that token while it still authenticates
with the same role and experiments; otherwise it creates a new one under a free name (`name`,
`name-2`, ...), so it never replaces, and never invalidates, a token someone else holds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, Sequence

from rlhp.types import FailedPrecondition

MAX_SUFFIX = 1000


class TokenIssuer(Protocol):
    """What `kept_token` needs of the query service core (`query_service.core.QueryService`)."""

    def authenticate(self, token: str | None, roles: Sequence[str] = ...) -> Any: ...

    def create_token(self, name: str, role: str = ..., experiments: Sequence[str] | str = ()) -> str: ...


def new_token(core: TokenIssuer, name: str, role: str, experiments: Sequence[str] = ()) -> str:
    """A new token under `name`, or `name-2`, `name-3`, ... when the name is taken."""
    for k in range(1, MAX_SUFFIX + 1):
        candidate = name if k == 1 else f"{name}-{k}"
        try:
            return core.create_token(candidate, role, list(experiments))
        except FailedPrecondition:  # the name has a token (an earlier run's, or someone's)
            continue
    raise FailedPrecondition(f"no free labeler name {name}, {name}-2, ... {name}-{MAX_SUFFIX}")


def kept_token(core: TokenIssuer, path: str | os.PathLike, name: str, role: str,
               experiments: Sequence[str] = ()) -> str:
    """The token saved at `path` if it still authenticates as `role` for exactly `experiments`
    (empty: all); else a `new_token`, written to `path` (mode 0600)."""
    path = Path(path)
    want = frozenset(experiments) or None
    if path.exists():
        token = path.read_text().strip()
        try:
            caller = core.authenticate(token, (role,))
        except PermissionError:  # revoked, rotated, from another database, or of another role
            caller = None
        if caller is not None and caller.experiments == want:
            return token
    token = new_token(core, name, role, experiments)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token
