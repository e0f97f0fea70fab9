"""The reward model's checkpoint file: its format, an atomic write, a checked read.

One `torch.save`d dict (format "rlhp.reward_model", version 1; loaded with `weights_only=True`):
the space and config, the published snapshot, the training side (members, optimisers, dropout
generators, L2 weights, sampling RNG), the comparison buffer and counters — everything needed to
resume with the same scores, version and continued training. `RewardModel.checkpoint` / `load`
assemble and take apart the dict; this module knows the file.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Any, Callable

import numpy as np
import torch

from rlhp.types import FailedPrecondition, NotFound, Space

CHECKPOINT_NAME = "reward_model.pt"
FORMAT = "rlhp.reward_model"
FORMAT_VERSION = 1
SNAPSHOT_FORMAT = "rlhp.reward_snapshot"
"""The published model alone (space, config, version, members, normalisation): what a learner
needs to score while the service is unreachable (`RewardModel.snapshot` / `from_snapshot`)."""


def clone_tree(obj: Any) -> Any:
    """Deep copy of nested dicts/lists whose leaves are tensors (moved to CPU) or plain values."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: clone_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(clone_tree(v) for v in obj)
    return obj


def tensor_once() -> Callable[[np.ndarray], torch.Tensor]:
    """array -> tensor sharing its memory, one tensor per array: `torch.save` stores a segment that
    several places hold (buffer and normalisation pool) once."""
    tensors: dict[int, torch.Tensor] = {}

    def t(a: np.ndarray) -> torch.Tensor:
        if id(a) not in tensors:
            tensors[id(a)] = torch.from_numpy(a)
        return tensors[id(a)]

    return t


def array_once() -> Callable[[torch.Tensor], np.ndarray]:
    """The inverse of `tensor_once`: a tensor saved once stays one array after loading."""
    arrays: dict[int, np.ndarray] = {}

    def a(x: torch.Tensor) -> np.ndarray:
        if id(x) not in arrays:
            arrays[id(x)] = x.numpy()
        return arrays[id(x)]

    return a


def space_to_dict(space: Space) -> dict[str, Any]:
    return {"obs_shape": list(space.obs_shape), "obs_dtype": space.obs_dtype,
            "action_kind": space.action_kind, "action_n": space.action_n, "act_shape": list(space.act_shape)}


def space_from_dict(sp: dict[str, Any]) -> Space:
    return Space(tuple(sp["obs_shape"]), sp["obs_dtype"], sp["action_kind"], int(sp["action_n"]),
                 tuple(sp["act_shape"]))


def read(path: str) -> dict[str, Any]:
    """The checkpoint dict at `path`; NotFound when there is none, FailedPrecondition when the
    file is not a reward model checkpoint of this format version."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NotFound(f"no reward model checkpoint at {path}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FailedPrecondition(f"{path} is not a reward model checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        raise FailedPrecondition(
            f"{path} has reward model checkpoint format {state.get('format_version')}, "
            f"this code reads {FORMAT_VERSION}")
    return state


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the target's directory, fsync, then rename over it."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def snapshot_bytes(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(dict(state, format=SNAPSHOT_FORMAT, format_version=FORMAT_VERSION), buf)
    return buf.getvalue()


def snapshot_from_bytes(data: bytes) -> dict[str, Any]:
    """The state of `snapshot_bytes`; FailedPrecondition when `data` is something else."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — truncated or foreign bytes
        raise FailedPrecondition(f"not a reward model snapshot ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != SNAPSHOT_FORMAT \
            or state.get("format_version") != FORMAT_VERSION:
        raise FailedPrecondition("not a reward model snapshot of this format version")
    return state
