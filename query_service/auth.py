"""Who may do what: tokens, roles, and which experiments a caller may touch.

A token maps (by its salted hash, in the store's `labelers` table) to a name, a role and optionally
a list of experiments. Producers (`producer`, `admin`) add segments and report progress; labelers
(`labeler`, `teacher`, `admin`) lease, answer, release and watch queries; every role may read the
stats of its own experiments. A missing, unknown or revoked token is `rlhp.types.Unauthenticated`
(UNAUTHENTICATED); a valid token that may not do what it asks — another role, or an experiment
outside its scope — is `rlhp.types.PermissionDenied` (PERMISSION_DENIED). Both say why in words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from rlhp.types import FailedPrecondition, InvalidRequest, NotFound, PermissionDenied, Unauthenticated

from . import intake
from .store import ROLES, Store, TokenExists

LABELING_ROLES = ("labeler", "teacher", "admin")
PRODUCER_ROLES = ("producer", "admin")


@dataclass(frozen=True)
class Caller:
    name: str
    role: str
    experiments: frozenset[str] | None  # None: every experiment

    def may(self, experiment: str) -> bool:
        return self.experiments is None or experiment in self.experiments


class Auth:
    """Tokens of one store, and the checks of a request against them."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    def create_token(self, name: str, role: str = "labeler", experiments: Sequence[str] | str = (),
                     replace: bool = False) -> str:
        """Create `name`'s token; the plain token is returned once, only its hash is kept.

        FailedPrecondition when `name` already has one (never replaced silently; `replace=True`
        rotates it on purpose)."""
        try:
            return self.store.create_token(name, role, experiments if isinstance(experiments, str)
                                           else list(experiments), now=self.clock(), replace=replace)
        except TokenExists as e:
            raise FailedPrecondition(str(e)) from None
        except ValueError as e:
            raise InvalidRequest(str(e)) from None

    def revoke_token(self, name: str) -> None:
        if not self.store.revoke_token(name):
            raise NotFound(f"no labeler named {name!r}")

    def authenticate(self, token: str | None, roles: Sequence[str] = ROLES) -> Caller:
        """The caller behind `token`; Unauthenticated when missing, unknown or revoked, PermissionDenied
        when of another role."""
        if not isinstance(token, str) or not token:
            raise Unauthenticated("missing token: send 'authorization: Bearer <token>' "
                                  "(create one with `rlhp token create`)")
        row = self.store.labeler_for(token)
        if row is None:
            raise Unauthenticated("unknown token (create one with `rlhp token create`)")
        if row["revoked"]:
            raise Unauthenticated(f"the token of {row['name']!r} was revoked")
        if row["role"] not in roles:
            raise PermissionDenied(f"{row['name']!r} has role {row['role']!r}, which may not do this "
                                  f"(needs one of: {', '.join(roles)})")
        exps = row["experiments"]
        return Caller(row["name"], row["role"], frozenset(exps.split(",")) if exps else None)

    @staticmethod
    def check(caller: Caller, experiment: str, doing: str) -> None:
        """PermissionDenied unless `caller` may touch `experiment`; `doing` completes
        "<name> may not ..." (e.g. "label experiment")."""
        if not caller.may(experiment):
            raise PermissionDenied(f"{caller.name!r} may not {doing} {experiment!r}")

    @classmethod
    def scope(cls, caller: Caller, experiments: Sequence[str] | str) -> list[str] | None:
        """The experiments a labeler's request covers: those named (each allowed to `caller`), else
        those `caller` may label (None: every experiment)."""
        if isinstance(experiments, str):
            experiments = [experiments] if experiments else []
        wanted = [intake.experiment_name(e) for e in experiments or ()]
        for e in wanted:
            cls.check(caller, e, "label experiment")
        if wanted:
            return sorted(set(wanted))
        return None if caller.experiments is None else sorted(caller.experiments)
