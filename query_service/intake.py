"""Validation of what comes in: segment records, names, addresses, numbers. No state, no SQL.

Every check raises `rlhp.types.InvalidRequest` with a message that names the field and the bound, so a
producer or labeler can fix its request from the message alone (`docs/architecture.md`, contracts).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from rlhp.types import InvalidRequest, Preference

from .types import SegmentRecord

MAX_ID_CHARS = 200
MAX_LABEL_BUDGET = 10_000_000


def validate_record(r: Any, i: int, max_segment_steps: int) -> SegmentRecord:
    """Segment `i` of a request, checked and normalised (stripped names, float32 rewards, float64
    qpos/qvel, `env_step`/`fps` as numbers)."""
    if not isinstance(r, SegmentRecord):
        raise InvalidRequest(f"segment {i} is a {type(r).__name__}, not a SegmentRecord")
    where = f"segment {i}"
    for name in ("id", "experiment"):
        v = getattr(r, name)
        if not isinstance(v, str) or not v.strip():
            raise InvalidRequest(f"{where}: {name} is empty")
        if len(v) > MAX_ID_CHARS or any(ch in v for ch in "\x00\n\r"):
            raise InvalidRequest(f"{where}: {name} must be ≤ {MAX_ID_CHARS} printable characters")
    where = f"segment {i} ({r.id!r})"
    if not isinstance(r.env_id, str) or len(r.env_id) > MAX_ID_CHARS:
        raise InvalidRequest(f"{where}: env_id must be a string of ≤ {MAX_ID_CHARS} characters")
    obs = as_array(r.observations, f"{where}: observations")
    if obs.ndim < 1 or obs.shape[0] < 1:
        raise InvalidRequest(f"{where}: observations have shape {list(obs.shape)}; need [T ≥ 1, ...]")
    t = obs.shape[0]
    if t > max_segment_steps:
        raise InvalidRequest(f"{where}: {t} steps is longer than the limit of {max_segment_steps}")
    act = as_array(r.actions, f"{where}: actions")
    if act.ndim < 1 or act.shape[0] != t:
        raise InvalidRequest(f"{where}: actions have shape {list(act.shape)}, but observations have T={t} steps")
    rew = as_array(r.true_rewards, f"{where}: true_rewards")
    if rew.shape != (t,):
        raise InvalidRequest(f"{where}: true_rewards have shape {list(rew.shape)}, expected [{t}]")
    if rew.dtype.kind not in "fiu":
        raise InvalidRequest(f"{where}: true_rewards must be numbers, got {rew.dtype}")
    rew = rew.astype(np.float32)
    if not np.isfinite(rew).all():
        raise InvalidRequest(f"{where}: true_rewards contain NaN or infinite values (or overflow float32)")
    frames = qpos = qvel = None
    if r.frames is not None and np.size(r.frames) > 0:
        frames = as_array(r.frames, f"{where}: frames")
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[0] != t or frames.shape[3] != 3:
            raise InvalidRequest(f"{where}: frames must be [T={t}, H, W, 3] uint8 RGB, got "
                                 f"{list(frames.shape)} {frames.dtype}")
    for name in ("qpos", "qvel"):
        v = getattr(r, name)
        if v is not None and np.size(v) > 0:
            a = as_array(v, f"{where}: {name}")
            if a.ndim != 2 or a.shape[0] != t:
                raise InvalidRequest(f"{where}: {name} must be [T={t}, n], got {list(a.shape)}")
            a = a.astype(np.float64)
            if name == "qpos":
                qpos = a
            else:
                qvel = a
    if qvel is not None and qpos is None:
        raise InvalidRequest(f"{where}: qvel was sent without qpos")
    try:
        env_step = int(r.env_step)
        fps = float(r.fps) if r.fps else 30.0
    except (TypeError, ValueError):
        raise InvalidRequest(f"{where}: env_step must be an integer and fps a number") from None
    if env_step < 0:
        raise InvalidRequest(f"{where}: env_step is negative ({env_step})")
    if not (math.isfinite(fps) and 0 < fps <= 1000):
        raise InvalidRequest(f"{where}: fps must lie in (0, 1000], got {fps}")
    return replace(r, id=r.id.strip(), experiment=r.experiment.strip(), observations=obs, actions=act,
                   true_rewards=rew, frames=frames, qpos=qpos, qvel=qvel, env_step=env_step, fps=fps,
                   random_policy=bool(r.random_policy))


def batch_shapes(records: Sequence[SegmentRecord]) -> dict[str, tuple[str, str, str]]:
    """experiment -> (env_id, observation key "HxW:dtype", action key "n") of a validated batch, whose
    segments of one experiment must agree on their per-step shapes (InvalidRequest otherwise)."""
    shapes: dict[str, tuple] = {}
    for i, r in enumerate(records):
        key = (r.observations.shape[1:], str(r.observations.dtype), r.actions.shape[1:])
        if shapes.setdefault(r.experiment, key) != key:
            raise InvalidRequest(
                f"segment {i} ({r.id!r}): observations {list(r.observations.shape[1:])} / actions "
                f"{list(r.actions.shape[1:])} differ from other segments of {r.experiment!r} in the request")
    out = {}
    for exp, (obs_shape, obs_dtype, act_shape) in shapes.items():
        env_id = next(r.env_id for r in records if r.experiment == exp)
        out[exp] = (env_id, "x".join(map(str, obs_shape)) + ":" + obs_dtype, "x".join(map(str, act_shape)))
    return out


def check_shapes(experiment: str, stored: Any, obs_key: str, act_key: str) -> None:
    """Refuse segments whose per-step shapes differ from those `stored` for `experiment` (a row with
    `obs_shape`, `act_shape`; None or empty shapes: nothing stored yet, anything goes)."""
    if stored is None or not stored["obs_shape"]:
        return
    if (stored["obs_shape"], stored["act_shape"]) != (obs_key, act_key):
        raise InvalidRequest(
            f"experiment {experiment!r} stores observations {stored['obs_shape']} and actions "
            f"[{stored['act_shape']}] per step, but this request sends {obs_key} and [{act_key}]")


def as_array(value: Any, what: str) -> np.ndarray:
    """`value` as a finite numeric array (InvalidRequest otherwise)."""
    if value is None:
        raise InvalidRequest(f"{what} are missing")
    try:
        a = np.asarray(value)
    except Exception:  # noqa: BLE001
        raise InvalidRequest(f"{what} are not an array") from None
    if a.dtype.kind not in "biuf":
        raise InvalidRequest(f"{what} must be numeric, got dtype {a.dtype}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise InvalidRequest(f"{what} contain {int(a.size - np.isfinite(a).sum())} NaN or infinite value(s)")
    return a


def text(value: Any, what: str) -> str:
    """An optional short printable string, stripped ("" for None)."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_ID_CHARS or any(ch in value for ch in "\x00\n\r"):
        raise InvalidRequest(f"{what} must be a string of ≤ {MAX_ID_CHARS} printable characters")
    return value.strip()


def address(value: Any) -> str:
    """A reward service address HOST:PORT ("" for none)."""
    out = text(value, "reward_address")
    if out and (":" not in out or any(ch.isspace() for ch in out)):
        raise InvalidRequest(f"reward_address must look like HOST:PORT (e.g. 127.0.0.1:50051), got {out!r}")
    return out


def experiment_name(experiment: Any) -> str:
    if not isinstance(experiment, str) or not experiment.strip():
        raise InvalidRequest("experiment is empty")
    if len(experiment) > MAX_ID_CHARS:
        raise InvalidRequest(f"experiment name is longer than {MAX_ID_CHARS} characters")
    return experiment.strip()


def query_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest("query_id is empty")
    if len(value) > MAX_ID_CHARS:
        raise InvalidRequest("query_id is too long")
    return value


def progress_numbers(env_steps: Any, label_budget: Any) -> tuple[int, int]:
    """(env steps ≥ 0, label budget in [0, MAX_LABEL_BUDGET]; 0: the service's default)."""
    try:
        steps = int(env_steps)
        budget = int(label_budget or 0)
    except (TypeError, ValueError):
        raise InvalidRequest("env_steps and label_budget must be integers") from None
    if steps < 0:
        raise InvalidRequest(f"env_steps must be ≥ 0, got {steps}")
    if not 0 <= budget <= MAX_LABEL_BUDGET:
        raise InvalidRequest(f"label_budget must lie in [0, {MAX_LABEL_BUDGET:,}] (0: the service's "
                             f"default), got {budget}")
    return steps, budget


def answer(value: Any) -> Preference:
    """A label's answer; unset is refused."""
    if value in (0, None, "", "PREFERENCE_UNSPECIFIED"):
        raise InvalidRequest("answer is unset: send LEFT, RIGHT, EQUAL or INCOMPARABLE")
    return Preference.parse(value)


def side(value: Any) -> Preference:
    """LEFT or RIGHT (a clip's side)."""
    if value in (0, None, ""):
        raise InvalidRequest("side is unset: send LEFT or RIGHT")
    pside = Preference.parse(value)
    if pside not in (Preference.LEFT, Preference.RIGHT):
        raise InvalidRequest(f"side must be LEFT or RIGHT, not {pside.name}")
    return pside


def clip_format(value: Any) -> str:
    fmt = (value or "mp4").lower()
    if fmt not in ("mp4", "webm"):
        raise InvalidRequest(f"format must be 'mp4' or 'webm', not {fmt!r}")
    return fmt


def answer_seconds(value: Any) -> float:
    """How long a labeler took: a finite number ≥ 0."""
    try:
        secs = float(value or 0.0)
    except (TypeError, ValueError):
        raise InvalidRequest("seconds must be a number") from None
    if not math.isfinite(secs) or secs < 0:
        raise InvalidRequest(f"seconds must be a finite number ≥ 0, got {value}")
    return secs


def lease_seconds(value: Any) -> float:
    """A requested lease length ≥ 0 (0: the default)."""
    try:
        seconds = float(value or 0)
    except (TypeError, ValueError):
        raise InvalidRequest("lease_seconds must be a number") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidRequest(f"lease_seconds must be ≥ 0 (0: the default), got {value}")
    return seconds
