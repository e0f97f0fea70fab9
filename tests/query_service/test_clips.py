"""Clip rendering: Atari frames and MuJoCo physics state become browser-playable videos, cached."""

from __future__ import annotations

import io
import os
import time

os.environ.setdefault("MUJOCO_GL", "osmesa")  # before anything imports mujoco
if os.environ["MUJOCO_GL"] == "osmesa":
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import av  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from query_service.clips import ClipRenderer, _atoms  # noqa: E402
from query_service.types import SegmentRecord  # noqa: E402
from rlhp.wire import InvalidRequest  # noqa: E402


def atari_record(seg_id: str = "pong-0001", t: int = 25, seed: int = 0) -> SegmentRecord:
    rng = np.random.default_rng(seed)
    return SegmentRecord(
        id=seg_id, experiment="pong", env_id="ALE/Pong-v5",
        observations=np.zeros((t, 4, 84, 84), np.uint8), actions=np.zeros(t, np.int64),
        true_rewards=np.zeros(t, np.float32),
        frames=rng.integers(0, 256, (t, 210, 160, 3), dtype=np.uint8), fps=15.0)


def hopper_states(steps: int = 20) -> tuple[np.ndarray, np.ndarray, float]:
    """qpos/qvel of `steps` real Hopper-v5 steps with random actions, and the env's frame rate."""
    import gymnasium

    try:
        env = gymnasium.make("Hopper-v5")
    except ImportError:
        # gymnasium's MuJoCo package needs `imageio`; without it, step the same model the same way
        # (frame_skip 4 of the XML's timestep), which is what Hopper-v5.step does to the physics.
        import mujoco

        from query_service.clips import _load_model

        model, _ = _load_model("Hopper-v5")
        data = mujoco.MjData(model)
        rng = np.random.default_rng(0)
        data.qpos[:] = model.qpos0 + rng.uniform(-5e-3, 5e-3, model.nq)
        data.qpos[1] = 1.25
        qpos, qvel = [], []
        for _ in range(steps):
            data.ctrl[:] = rng.uniform(-1, 1, model.nu)
            mujoco.mj_step(model, data, nstep=4)
            qpos.append(data.qpos.copy())
            qvel.append(data.qvel.copy())
        return np.array(qpos), np.array(qvel), 1.0 / (4 * model.opt.timestep)
    env.reset(seed=0)
    env.action_space.seed(0)
    qpos, qvel = [], []
    for _ in range(steps):
        env.step(env.action_space.sample())
        qpos.append(env.unwrapped.data.qpos.copy())
        qvel.append(env.unwrapped.data.qvel.copy())
    fps = float(env.metadata.get("render_fps", 125))
    env.close()
    return np.array(qpos), np.array(qvel), fps


def decode(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.fixture()
def renderer(tmp_path):
    r = ClipRenderer(tmp_path / "clips")
    yield r
    r.close()


def test_atari_mp4_decodes_with_frame_count_and_size(renderer):
    mime, data = renderer.render(atari_record(), "mp4")
    assert mime == "video/mp4"
    # faststart: the moov atom (index) comes before the media data so playback starts while loading
    boxes = [kind for kind, *_ in _atoms(data, 0, len(data))]
    assert boxes.index(b"moov") < boxes.index(b"mdat"), boxes
    frames = decode(data)
    assert len(frames) == 25
    assert frames[0].shape == (420, 320, 3)  # 210×160 upscaled ×2
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"


def test_atari_webm_decodes(renderer):
    mime, data = renderer.render(atari_record(), "webm")
    assert mime == "video/webm"
    frames = decode(data)
    assert len(frames) == 25
    assert frames[0].shape == (420, 320, 3)
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].codec_context.name in ("vp9", "libvpx-vp9")


def test_odd_sized_frames_are_padded_to_even(renderer):
    rec = SegmentRecord(id="odd", experiment="x", env_id="Custom-v0", observations=np.zeros((5, 3)),
                        actions=np.zeros(5), true_rewards=np.zeros(5, np.float32),
                        frames=np.full((5, 333, 401, 3), 128, np.uint8), fps=10)
    frames = decode(renderer.render(rec)[1])
    assert len(frames) == 5 and frames[0].shape == (334, 402, 3)


def test_hopper_clip_renders_non_blank_and_is_cached(renderer):
    qpos, qvel, fps = hopper_states(20)
    rec = SegmentRecord(id="hopper-0001", experiment="hopper", env_id="Hopper-v5",
                        observations=np.zeros((20, 11), np.float32), actions=np.zeros((20, 3), np.float32),
                        true_rewards=np.zeros(20, np.float32), qpos=qpos, qvel=qvel, fps=fps)
    t0 = time.perf_counter()
    mime, data = renderer.render(rec)
    cold = time.perf_counter() - t0
    frames = decode(data)
    assert mime == "video/mp4" and len(frames) == 20
    assert frames[0].shape[0] % 2 == 0 and frames[0].shape[1] % 2 == 0
    for frame in (frames[0], frames[-1]):
        assert frame.std() > 10  # a scene, not a blank image
    assert renderer.renders == 1

    t0 = time.perf_counter()
    mime2, data2 = renderer.render(rec)
    warm = time.perf_counter() - t0
    assert (mime2, data2) == (mime, data)
    assert renderer.renders == 1  # served from the cache
    assert renderer.cached(rec.id) == (mime, data)
    assert renderer.cached(rec.id, "webm") is None and renderer.cached("other") is None
    assert warm < cold
    # The cache is on disk: a fresh renderer on the same directory does not render again.
    again = ClipRenderer(renderer.cache_dir)
    assert again.render(rec)[1] == data and again.renders == 0


def test_bad_records_raise_invalid_request(renderer):
    base = atari_record()
    empty = SegmentRecord(id="empty", experiment="x", env_id="Hopper-v5", observations=np.zeros((3, 11)),
                          actions=np.zeros((3, 3)), true_rewards=np.zeros(3, np.float32))
    with pytest.raises(InvalidRequest, match="neither frames"):
        renderer.render(empty)
    unknown = SegmentRecord(id="u", experiment="x", env_id="NoSuchEnv-v9", observations=np.zeros((3, 11)),
                            actions=np.zeros((3, 3)), true_rewards=np.zeros(3, np.float32),
                            qpos=np.zeros((3, 6)), qvel=np.zeros((3, 6)))
    with pytest.raises(InvalidRequest, match="unknown env"):
        renderer.render(unknown)
    wrong_width = SegmentRecord(id="w", experiment="x", env_id="Hopper-v5", observations=np.zeros((3, 11)),
                                actions=np.zeros((3, 3)), true_rewards=np.zeros(3, np.float32),
                                qpos=np.zeros((3, 4)), qvel=np.zeros((3, 6)))
    with pytest.raises(InvalidRequest, match="qpos has shape"):
        renderer.render(wrong_width)
    grey = SegmentRecord(id="g", experiment="x", env_id="ALE/Pong-v5", observations=np.zeros((3, 1)),
                         actions=np.zeros(3), true_rewards=np.zeros(3, np.float32),
                         frames=np.zeros((3, 210, 160), np.uint8))
    with pytest.raises(InvalidRequest, match="expected \\[T, H, W, 3\\]"):
        renderer.render(grey)
    with pytest.raises(InvalidRequest, match="format"):
        renderer.render(base, "gif")
    assert not list(renderer.cache_dir.glob(".tmp-*"))  # failed renders leave no partial files
