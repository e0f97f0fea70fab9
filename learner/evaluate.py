"""`rlhp evaluate runs/<name> --episodes N [--video out.mp4]`: the TRUE return of a saved policy.

Loads the policy's RLModule from the run's checkpoint and plays `N` episodes of the run's env with
greedy actions (argmax for discrete actions, the mean for continuous ones). The environment reward is
read from `info["true_reward"]` — evaluation is the only place it is used besides the synthetic
teacher. `--video` writes the first episode as an MP4.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def load_module(run_dir: Path):
    from ray.rllib.core.rl_module.rl_module import RLModule

    from learner.runs import policy_dir

    policy = policy_dir(run_dir)
    if policy is None:
        raise FileNotFoundError(f"{run_dir} has no policy checkpoint yet (policy/ is written every "
                                "run.checkpoint_every iterations and at the end)")
    return RLModule.from_checkpoint(str(policy / "learner_group" / "learner" / "rl_module" / "default_policy"))


def greedy_action(module, obs: np.ndarray, action_space):
    import torch
    from ray.rllib.core.columns import Columns

    with torch.inference_mode():
        x = np.asarray(obs)
        if x.dtype == np.float64:  # MuJoCo observations are float64; the module's weights float32
            x = x.astype(np.float32)
        out = module.forward_inference({Columns.OBS: torch.as_tensor(x[None])})
    logits = out[Columns.ACTION_DIST_INPUTS][0].cpu().numpy()
    if hasattr(action_space, "n"):
        return int(np.argmax(logits))
    mean = logits[: logits.shape[0] // 2]
    return np.clip(mean, action_space.low, action_space.high).astype(action_space.dtype)


def goal_measure(cfg):
    """The `measure` of the experiment's goal (`actors.goals`), or None."""
    if not cfg.teacher.goal:
        return None
    from actors.goals import load_goal

    return getattr(load_goal(cfg.teacher.goal), "measure", None)


def evaluate(run_dir: str | Path, episodes: int = 5, video: str | None = None, seed: int = 12345,
             max_steps: int = 100_000, measures: list[dict] | None = None) -> list[float]:
    """True returns of `episodes` greedy episodes (the goal's, when the run has `teacher.goal`);
    with a goal that has a measure, its per-episode values are appended to `measures`."""
    from actors.envs import make_env
    from learner import experiment

    run_dir = Path(run_dir)
    cfg = experiment.load(str(run_dir / "config.yaml"))
    module = load_module(run_dir)
    opts = cfg.env_options
    atari = cfg.env.env_id.startswith("ALE/")
    if video and not atari:
        opts["render_mode"] = "rgb_array"
    env = make_env(cfg.env.env_id, **opts)
    measure = goal_measure(cfg)
    returns, frames = [], []
    try:
        for ep in range(episodes):
            obs, info = env.reset(seed=seed + ep)
            total, done, steps = 0.0, False, 0
            qpos = [info["qpos"]] if "qpos" in info else []
            while not done and steps < max_steps:
                if video and ep == 0:
                    frame = info.get("rgb") if atari else env.render()
                    if frame is not None:
                        frames.append(np.asarray(frame))
                obs, _, term, trunc, info = env.step(greedy_action(module, obs, env.action_space))
                total += float(info.get("true_reward", 0.0))
                if qpos and "qpos" in info:
                    qpos.append(info["qpos"])
                done, steps = term or trunc, steps + 1
            returns.append(total)
            extra = ""
            if measure is not None and qpos:
                m = measure(np.asarray(qpos))
                extra = ", " + ", ".join(f"{k} {v:g}" for k, v in m.items())
                if measures is not None:
                    measures.append(m)
            print(f"episode {ep + 1}/{episodes}: true return {total:.1f} ({steps} steps){extra}", flush=True)
    finally:
        env.close()
    if video and frames:
        write_video(frames, video, fps=float(getattr(env, "fps", 30.0)))
        print(f"wrote {video} ({len(frames)} frames)")
    return returns


def write_video(frames: list[np.ndarray], path: str, fps: float = 30.0) -> None:
    import av

    h, w = frames[0].shape[:2]
    h2, w2 = h - h % 2, w - w % 2
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=max(1, int(round(fps))))
        stream.width, stream.height, stream.pix_fmt = w2, h2, "yuv420p"
        for f in frames:
            img = np.ascontiguousarray(f[:h2, :w2, :3].astype(np.uint8))
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rlhp evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a run directory written by `rlhp train`")
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--video", help="write the first episode to this MP4 file")
    ap.add_argument("--seed", type=int, default=12345)
    args = ap.parse_args(argv)
    if not (Path(args.run_dir) / "config.yaml").exists():
        print(f"rlhp evaluate: {args.run_dir} is not a run directory (no config.yaml)", file=sys.stderr)
        return 2
    measures: list[dict] = []
    try:
        returns = evaluate(args.run_dir, args.episodes, args.video, args.seed, measures=measures)
    except ImportError as e:  # gymnasium's DependencyNotInstalled (pygame for classic control)
        print(f"rlhp evaluate: cannot render this env for --video: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"rlhp evaluate: {e}", file=sys.stderr)
        return 2
    print(f"true return over {len(returns)} episodes: mean {np.mean(returns):.2f}, "
          f"std {np.std(returns):.2f}, min {np.min(returns):.1f}, max {np.max(returns):.1f}")
    for key in (measures[0] if measures else {}):
        vals = [m[key] for m in measures]
        print(f"{key} per episode: mean {np.mean(vals):.2f}, min {np.min(vals):g}, max {np.max(vals):g}")
    return 0
