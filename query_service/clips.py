"""Clip rendering: a segment becomes a short browser-playable video, only when a human will watch it.

`ClipRenderer(cache_dir).render(record, fmt)` returns `(mime_type, bytes)`:

- ``"mp4"``: H.264 (yuv420p, even dimensions) in MP4 with the index (moov) first, like ``+faststart``,
  so it plays while loading;
- ``"webm"``: VP9 in WebM (for browsers without H.264).

Atari segments carry RGB frames ([T, H, W, 3] uint8); they are upscaled ×2 nearest-neighbour so a
person can see the sprites. MuJoCo segments carry the physics state (qpos/qvel per step); each step is
put into the env's MjModel/MjData, ``mj_forward`` is run and the frame is drawn offscreen with the same
camera gymnasium uses for ``render_mode="rgb_array"`` (the model's ``track`` camera, or the env's
default camera config). Rendering needs no display: when neither ``MUJOCO_GL`` nor a display is set we
pick OSMesa before MuJoCo is imported.

Videos are cached on disk under ``cache_dir`` by (segment id, format), written atomically; a second
call for the same clip reads the file back. Concurrent calls for the same clip render it once.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import os
import re
import tempfile
import threading
import weakref
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from rlhp.types import InvalidRequest

from query_service.types import SegmentRecord

FORMATS = {"mp4": "video/mp4", "webm": "video/webm"}
MAX_FRAMES = 2000  # a clip is 1–2 s; anything this long is a mistake, not a clip
MUJOCO_SIZE = 240  # MuJoCo frames are MUJOCO_SIZE × MUJOCO_SIZE
# Shadows and reflections cost ~4× the time in software GL (OSMesa) and add little for a labeler.
_FAST_FLAGS = ("mjRND_SHADOW", "mjRND_REFLECTION")
_CACHE_VERSION = "v1"  # bump when the look of clips changes so old cached files are not served


def _ensure_headless_gl() -> None:
    """Choose OSMesa for MuJoCo when nothing else is configured and there is no display."""
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY") \
            and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ["MUJOCO_GL"] = "osmesa"
    if os.environ.get("MUJOCO_GL") == "osmesa":
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")


_ensure_headless_gl()


def _even(n: int) -> int:
    return n + (n % 2)


def _upscale(frames: np.ndarray) -> np.ndarray:
    """Nearest-neighbour ×2 for small frames (Atari 210×160 → 420×320); pad to even sizes."""
    t, h, w, _ = frames.shape
    if max(h, w) < 320:
        frames = frames.repeat(2, axis=1).repeat(2, axis=2)
        t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, _even(h) - h), (0, _even(w) - w), (0, 0)), mode="edge")
    return np.ascontiguousarray(frames)


def encode(frames: np.ndarray, fps: float, fmt: str) -> bytes:
    """Encode RGB uint8 frames [T, H, W, 3] (even H, W) as MP4/H.264 (moov first) or WebM/VP9 bytes.

    Encoding happens in memory; MP4's index (moov) is then moved in front of the media data here
    (what ffmpeg's ``+faststart`` does, without ffmpeg re-opening the output file by name).
    """
    import av  # local: only the renderer needs PyAV

    rate = Fraction(float(fps)).limit_denominator(1001) if fps and fps > 0 else Fraction(30)
    t, h, w, _ = frames.shape
    buf = io.BytesIO()
    if fmt == "mp4":
        container = av.open(buf, mode="w", format="mp4")
        stream = container.add_stream("libx264", rate=rate)
        # No B-frames keeps decode latency low; veryfast + crf 20 is sharp and quick for tiny clips.
        stream.options = {"preset": "veryfast", "crf": "20", "tune": "animation", "bf": "0",
                          "profile": "high", "threads": "1"}
    else:
        container = av.open(buf, mode="w", format="webm")
        stream = container.add_stream("libvpx-vp9", rate=rate)
        stream.options = {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0",
                          "row-mt": "1", "threads": "1"}
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    try:
        for frame in frames:
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    data = buf.getvalue()
    return faststart(data) if fmt == "mp4" else data


_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"mvex", b"udta"}


def _atoms(data: bytes | bytearray, start: int, end: int) -> list[tuple[bytes, int, int, int]]:
    """(type, offset, header size, total size) of the boxes in data[start:end]."""
    out = []
    pos = start
    while pos + 8 <= end:
        size = int.from_bytes(data[pos:pos + 4], "big")
        kind = bytes(data[pos + 4:pos + 8])
        header = 8
        if size == 1:
            size = int.from_bytes(data[pos + 8:pos + 16], "big")
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError(f"malformed MP4 box {kind!r} at {pos}")
        out.append((kind, pos, header, size))
        pos += size
    return out


def _shift_chunk_offsets(moov: bytearray, start: int, end: int, delta: int) -> None:
    for kind, pos, header, size in _atoms(moov, start, end):
        body = pos + header
        if kind in _CONTAINERS:
            _shift_chunk_offsets(moov, body, pos + size, delta)
        elif kind in (b"stco", b"co64"):
            count = int.from_bytes(moov[body + 4:body + 8], "big")
            width = 4 if kind == b"stco" else 8
            for i in range(count):
                at = body + 8 + i * width
                value = int.from_bytes(moov[at:at + width], "big") + delta
                if value >= 1 << (8 * width):
                    raise ValueError("chunk offset overflows stco; cannot move moov")
                moov[at:at + width] = value.to_bytes(width, "big")


def faststart(data: bytes) -> bytes:
    """Move the moov box in front of mdat (fixing chunk offsets) so playback starts while loading."""
    top = _atoms(data, 0, len(data))
    kinds = [a[0] for a in top]
    if b"moov" not in kinds or b"mdat" not in kinds or kinds.index(b"moov") < kinds.index(b"mdat"):
        return data
    moov_atom = top[kinds.index(b"moov")]
    moov = bytearray(data[moov_atom[1]:moov_atom[1] + moov_atom[3]])
    # New order: ftyp (if first), moov, then everything else in its old order.
    head = [a for a in top[:1] if a[0] == b"ftyp"]
    rest = [a for a in top if a not in head and a[0] != b"moov"]
    old_mdat = top[kinds.index(b"mdat")][1]
    new_mdat = sum(a[3] for a in head) + len(moov)
    for a in rest:
        if a[0] == b"mdat":
            break
        new_mdat += a[3]
    _shift_chunk_offsets(moov, 8, len(moov), new_mdat - old_mdat)
    parts = [data[a[1]:a[1] + a[3]] for a in head] + [bytes(moov)] + [data[a[1]:a[1] + a[3]] for a in rest]
    return b"".join(parts)


def _load_model(env_id: str) -> tuple[Any, dict]:
    """(MjModel, default camera config) of a gymnasium MuJoCo env id.

    Builds the env with ``gymnasium.make`` (the model is then exactly the env's). When gymnasium's
    MuJoCo package cannot be imported (it needs ``imageio``, which plain ``gymnasium`` does not
    install), the model is loaded from the XML file that gymnasium ships for the env instead.
    """
    import gymnasium

    try:
        spec = gymnasium.spec(env_id)
    except Exception as e:  # NameNotFound, VersionNotFound, DeprecatedEnv, ...
        raise InvalidRequest(f"unknown env {env_id!r}, cannot render its clip: {e}") from None
    entry = spec.entry_point if isinstance(spec.entry_point, str) else ""
    try:
        env = gymnasium.make(env_id)
    except ImportError as e:
        if not entry.startswith("gymnasium.envs.mujoco."):
            raise InvalidRequest(f"cannot build env {env_id!r} to render a clip: {e}") from None
        return _model_from_gymnasium_xml(env_id, spec, entry), {}
    except Exception as e:
        raise InvalidRequest(f"cannot build env {env_id!r} to render a clip: {e}") from None
    try:
        base = env.unwrapped
        if not hasattr(base, "model") or not hasattr(base, "data"):
            raise InvalidRequest(
                f"env {env_id!r} is not a MuJoCo env; send frames for its segments, not qpos/qvel")
        config = dict(getattr(getattr(base, "mujoco_renderer", None), "default_cam_config", None) or {})
        return base.model, config
    finally:
        env.close()


def _model_from_gymnasium_xml(env_id: str, spec: Any, entry: str) -> Any:
    import gymnasium
    import mujoco

    module = entry.split(":")[0].rsplit(".", 1)[-1]
    root = Path(gymnasium.__file__).parent / "envs" / "mujoco"
    xml = (spec.kwargs or {}).get("xml_file")
    if not xml:
        try:
            found = re.search(r'xml_file: str = "([^"]+)"', (root / f"{module}.py").read_text())
        except OSError:
            found = None
        if not found:
            raise InvalidRequest(f"cannot find the MuJoCo model of env {env_id!r}")
        xml = found.group(1)
    path = Path(xml) if os.path.isabs(xml) else root / "assets" / xml
    try:
        return mujoco.MjModel.from_xml_path(str(path))
    except Exception as e:
        raise InvalidRequest(f"cannot load the MuJoCo model of env {env_id!r} from {path}: {e}") from None


class _MujocoScene:
    """One env's model, data, offscreen renderer and camera. Not thread-safe: hold `lock`."""

    def __init__(self, env_id: str, size: int) -> None:
        _ensure_headless_gl()
        import mujoco

        self._mujoco = mujoco
        self.env: Any = None
        self.model, config = _load_model(env_id)
        self.data = mujoco.MjData(self.model)
        # Offscreen buffer must hold the frame.
        self.model.vis.global_.offwidth = max(int(self.model.vis.global_.offwidth), size)
        self.model.vis.global_.offheight = max(int(self.model.vis.global_.offheight), size)
        self.renderer = mujoco.Renderer(self.model, height=size, width=size)
        self.lock = threading.Lock()
        self._off_flags = [getattr(mujoco.mjtRndFlag, f) for f in _FAST_FLAGS]
        # gymnasium's rgb_array camera: the model's "track" camera when present, else a free camera
        # set from the env's default camera config.
        self.camera: Any = -1
        track = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, "track")
        if track >= 0:
            self.camera = track
        else:
            # As gymnasium's OffScreenViewer: a free camera looking at the median geom position of the
            # initial state from `extent` away, then the env's DEFAULT_CAMERA_CONFIG on top (the
            # camera stays free, so a `trackbodyid` there does not make it follow a body).
            cam = mujoco.MjvCamera()
            cam.type = mujoco.mjtCamera.mjCAMERA_FREE
            cam.fixedcamid = -1
            mujoco.mj_forward(self.model, self.data)
            for i in range(3):
                cam.lookat[i] = np.median(self.data.geom_xpos[:, i])
            cam.distance = self.model.stat.extent
            for key, value in config.items():
                if isinstance(value, np.ndarray):
                    getattr(cam, key)[:] = value
                else:
                    setattr(cam, key, value)
            self.camera = cam

    def render(self, qpos: np.ndarray, qvel: np.ndarray | None) -> np.ndarray:
        mujoco = self._mujoco
        nq, nv = self.model.nq, self.model.nv
        if qpos.ndim != 2 or qpos.shape[1] != nq:
            raise InvalidRequest(f"qpos has shape {list(qpos.shape)}, expected [T, {nq}] for this env")
        if qvel is not None and (qvel.ndim != 2 or qvel.shape != (qpos.shape[0], nv)):
            raise InvalidRequest(f"qvel has shape {list(qvel.shape)}, expected [{qpos.shape[0]}, {nv}]")
        if not np.isfinite(qpos).all() or (qvel is not None and not np.isfinite(qvel).all()):
            raise InvalidRequest("qpos/qvel contain NaN or infinite values")
        out = np.empty((qpos.shape[0], self.renderer.height, self.renderer.width, 3), np.uint8)
        with self.lock:
            for t in range(qpos.shape[0]):
                self.data.qpos[:] = qpos[t]
                self.data.qvel[:] = qvel[t] if qvel is not None else 0.0
                mujoco.mj_forward(self.model, self.data)
                self.renderer.update_scene(self.data, camera=self.camera)
                for flag in self._off_flags:
                    self.renderer.scene.flags[flag] = 0
                self.renderer.render(out=out[t])
        return out


_LIVE: "weakref.WeakSet[ClipRenderer]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # Free GL contexts while the GL bindings still exist (otherwise __del__ complains at exit).
    for renderer in list(_LIVE):
        try:
            renderer.close()
        except Exception:  # noqa: BLE001 — best effort at interpreter exit
            pass


class ClipRenderer:
    """Renders segments to browser-playable videos, cached on disk by (segment id, format)."""

    def __init__(self, cache_dir: str | Path, mujoco_size: int = MUJOCO_SIZE) -> None:
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.mujoco_size = int(mujoco_size)
        self._scenes: dict[str, _MujocoScene] = {}
        self._scenes_lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._key_locks_lock = threading.Lock()
        self.renders = 0  # clips actually rendered (not served from the cache)
        _LIVE.add(self)

    # -- public ---------------------------------------------------------------------------------

    def path_for(self, segment_id: str, fmt: str = "mp4") -> Path:
        fmt = self._check_fmt(fmt)
        digest = hashlib.sha1(f"{_CACHE_VERSION}\0{segment_id}".encode()).hexdigest()[:20]
        readable = re.sub(r"[^A-Za-z0-9_.-]", "_", segment_id)[:40]
        return self.cache_dir / f"{readable}-{digest}.{fmt}"

    def cached(self, segment_id: str, fmt: str = "mp4") -> tuple[str, bytes] | None:
        """(mime, bytes) when the clip is already on disk, else None — lets a caller skip loading the
        segment's frames/qpos from its store when nothing needs rendering."""
        fmt = self._check_fmt(fmt)
        data = self._read(self.path_for(segment_id, fmt))
        return None if data is None else (FORMATS[fmt], data)

    def render(self, record: SegmentRecord, fmt: str = "mp4") -> tuple[str, bytes]:
        """(mime type, video bytes) of `record`; rendered once, then read from the cache."""
        fmt = self._check_fmt(fmt)
        if not record.id:
            raise InvalidRequest("segment has no id; cannot render or cache its clip")
        path = self.path_for(record.id, fmt)
        cached = self._read(path)
        if cached is not None:
            return FORMATS[fmt], cached
        with self._key_lock(str(path)):
            cached = self._read(path)  # another thread may have rendered it meanwhile
            if cached is not None:
                return FORMATS[fmt], cached
            data = encode(self.frames(record), record.fps, fmt)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f".{fmt}", dir=self.cache_dir)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)  # atomic: readers see the whole file or none
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self.renders += 1
            return FORMATS[fmt], data

    def frames(self, record: SegmentRecord) -> np.ndarray:
        """The RGB frames [T, H, W, 3] uint8 (even H, W) that the clip of `record` shows."""
        if record.frames is not None and np.size(record.frames) > 0:
            frames = np.asarray(record.frames)
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
                raise InvalidRequest(
                    f"segment {record.id}: frames have shape {list(frames.shape)}, expected [T, H, W, 3]")
            if frames.dtype != np.uint8:
                raise InvalidRequest(f"segment {record.id}: frames must be uint8 RGB, got {frames.dtype}")
            if frames.shape[1] < 2 or frames.shape[2] < 2:
                raise InvalidRequest(f"segment {record.id}: frames of {frames.shape[1]}×{frames.shape[2]} "
                                     "pixels are too small to show")
            self._check_length(record, frames.shape[0])
            return _upscale(frames)
        if record.qpos is not None and np.size(record.qpos) > 0:
            qpos = np.asarray(record.qpos, dtype=np.float64)
            qvel = None if record.qvel is None or np.size(record.qvel) == 0 else \
                np.asarray(record.qvel, dtype=np.float64)
            self._check_length(record, qpos.shape[0] if qpos.ndim else 0)
            if not record.env_id:
                raise InvalidRequest(f"segment {record.id} has qpos but no env_id to rebuild the scene from")
            try:
                return self._scene(record.env_id).render(qpos, qvel)
            except InvalidRequest as e:
                raise InvalidRequest(f"segment {record.id}: {e}") from None
        raise InvalidRequest(
            f"segment {record.id} has neither frames (Atari) nor qpos (MuJoCo); it cannot be shown to a "
            "labeler — producers must send one of them")

    def close(self) -> None:
        with self._scenes_lock:
            for scene in self._scenes.values():
                with scene.lock:
                    scene.renderer.close()
                    if scene.env is not None:
                        scene.env.close()
            self._scenes.clear()

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _check_fmt(fmt: str) -> str:
        fmt = (fmt or "mp4").lower().lstrip(".")
        if fmt not in FORMATS:
            raise InvalidRequest(f"clip format {fmt!r} is not one of {sorted(FORMATS)}")
        return fmt

    @staticmethod
    def _check_length(record: SegmentRecord, n: int) -> None:
        if n <= 0:
            raise InvalidRequest(f"segment {record.id} has no steps to show")
        if n > MAX_FRAMES:
            raise InvalidRequest(f"segment {record.id} has {n} steps; clips are limited to {MAX_FRAMES}")

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def _key_lock(self, key: str) -> threading.Lock:
        with self._key_locks_lock:
            lock = self._key_locks.get(key)
            if lock is None:
                if len(self._key_locks) > 1024:  # forget idle locks; they are cheap to recreate
                    for k in [k for k, v in self._key_locks.items() if not v.locked()]:
                        del self._key_locks[k]
                lock = self._key_locks[key] = threading.Lock()
            return lock

    def _scene(self, env_id: str) -> _MujocoScene:
        with self._scenes_lock:
            scene = self._scenes.get(env_id)
            if scene is None:
                scene = self._scenes[env_id] = _MujocoScene(env_id, self.mujoco_size)
            return scene


__all__ = ["ClipRenderer", "FORMATS", "encode", "faststart"]
