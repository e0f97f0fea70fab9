"""`rlhp reward-service` / `python -m reward_service`: run the reward-model service.

Serves an ensemble of reward predictors over gRPC, trains it in the background on the comparisons
it receives, checkpoints periodically and on SIGTERM / SIGINT. `--demo` shows the whole thing
working on its own: a synthetic labeler with a known linear reward, talking to the service over
gRPC on loopback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from rlhp.signals import StopFlag
from rlhp.types import Preference, Space

log = logging.getLogger("rlhp.reward_service")

SPACE_HELP = """\
spaces:
  --obs-space OBS[:DTYPE]/ACTION describes what the reward model sees:
    OBS     observation shape, dimensions separated by 'x' (11, 4x84x84, ...)
    DTYPE   observation dtype (default float32; uint8 for 3-d image shapes)
    ACTION  'discrete:N' (N choices, sent as int64 indices) or 'box:SHAPE' (floats)
  examples:
    11/box:3                   Hopper (MuJoCo): 11 floats, 3 continuous actions
    17/box:6                   HalfCheetah
    4x84x84:uint8/discrete:6   Pong (Atari): 4 stacked 84x84 grey frames, 6 actions

examples:
  rlhp reward-service --obs-space 11/box:3 --port 50051 --checkpoint-dir runs/hopper/reward
  rlhp reward-service --checkpoint-dir runs/hopper/reward --resume
  rlhp reward-service --demo          # a self-contained demonstration (~40 s), exits 0
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlhp reward-service",
        description="Run the reward-model service: an ensemble of reward predictors r̂(o, a) trained\n"
                    "on labelled comparisons of segments (Bradley-Terry), scoring transitions in\n"
                    "batches over gRPC (rlhp.v1.RewardService). Trains in the background; checkpoints\n"
                    "periodically and on SIGTERM/SIGINT.",
        epilog=SPACE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, loopback only; another address needs TLS "
                        "or --insecure)")
    p.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate (needs --tls-key)")
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    p.add_argument("--token-file", metavar="PATH",
                   help="a shared token every client must send (authorization: Bearer <token>); clients "
                        "read it from $RLHP_REWARD_TOKEN. Default: $RLHP_REWARD_TOKEN if set, else no token")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host without TLS: the token and the segments then cross the "
                        "network in clear text (only on a network you trust; or tunnel to 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051, help="port to listen on; 0 picks a free one (default 50051)")
    p.add_argument("--obs-space", "--space", dest="space", metavar="SPACE",
                   help="observation/action space, e.g. 11/box:3 (see 'spaces' below); "
                        "not needed with --resume (the checkpoint knows it)")
    p.add_argument("--members", type=int, help="ensemble members (default 3)")
    p.add_argument("--target-std", type=float,
                   help="std of each member's normalised output (default 1.0 for vector "
                        "observations, 0.05 for images, as in the paper)")
    p.add_argument("--seed", type=int, help="seed of initialisation and sampling (default 0)")
    p.add_argument("--device", help="torch device of the ensemble: cpu (default), cuda, cuda:1, ...")
    p.add_argument("--smoke", action="store_true", help="tiny, fast configuration (tests, quick looks)")
    p.add_argument("--checkpoint-dir", metavar="DIR",
                   help="where checkpoints go (periodically, on SIGTERM/SIGINT and on the Checkpoint RPC)")
    p.add_argument("--resume", action="store_true",
                   help="load the latest checkpoint from --checkpoint-dir (weights, normalisation, "
                        "comparisons, version) instead of starting fresh")
    p.add_argument("--checkpoint-every", type=float, default=600.0, metavar="SECONDS",
                   help="write a checkpoint this often while serving (default 600; 0: only at exit)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--max-workers", type=int, default=8, help="gRPC worker threads (default 8)")
    p.add_argument("--no-train", action="store_true",
                   help="only serve (score with the loaded weights); do not train in the background")
    p.add_argument("--port-file", metavar="PATH", help="write the bound port to this file once listening")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    demo = p.add_argument_group("demonstration")
    demo.add_argument("--demo", action="store_true",
                      help="start the service on loopback, act as a synthetic labeler with a known "
                           "linear reward over gRPC, print progress, score a batch, checkpoint, exit")
    demo.add_argument("--demo-seconds", type=float, default=40.0, metavar="S",
                      help="how long the demonstration trains (default 40)")
    demo.add_argument("--demo-comparisons", type=int, default=400, metavar="N",
                      help="comparisons the demonstration sends (default 400)")
    return p


class UsageError(Exception):
    pass


def _config(args: argparse.Namespace, space: Space):
    from reward_service.config import RewardConfig

    overrides: dict[str, Any] = {}
    if args.members is not None:
        overrides["members"] = args.members
    if args.target_std is not None:
        overrides["target_std"] = args.target_std
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.device is not None:
        overrides["device"] = args.device
    try:
        if args.smoke:
            base = RewardConfig.smoke(target_std=RewardConfig.for_space(space).target_std)
            return base.replace(**overrides)
        return RewardConfig.for_space(space, **overrides)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None


def _parse_space(text: str | None) -> Space:
    if not text:
        raise UsageError("--obs-space is required (e.g. --obs-space 11/box:3), unless --resume or --demo")
    try:
        return Space.parse(text)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _build_model(args: argparse.Namespace):
    from reward_service.core import CHECKPOINT_NAME, RewardModel

    if args.resume:
        if not args.checkpoint_dir:
            raise UsageError("--resume needs --checkpoint-dir")
        path = os.path.join(args.checkpoint_dir, CHECKPOINT_NAME)
        if not os.path.isfile(path):
            raise UsageError(f"--resume: no checkpoint {path!r} (start without --resume to begin afresh)")
        try:
            model = RewardModel.load(path, checkpoint_dir=args.checkpoint_dir, device=args.device)
        except (ValueError, LookupError, RuntimeError, OSError) as e:
            raise UsageError(f"--resume: cannot load {path!r}: {e}") from None
        log.info("resumed %s at version %d", path, model.version)
        if args.space and Space.parse(args.space) != model.space:
            raise UsageError(f"--obs-space {args.space} differs from the checkpoint's space "
                             f"{model.space.to_string()}")
        return model
    space = _parse_space(args.space)
    return RewardModel(space, _config(args, space), checkpoint_dir=args.checkpoint_dir)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2); argparse already printed why
        return int(e.code or 0)
    # Decoded requests are read-only views of the received bytes; torch warns once about that
    # although the reward model never writes to its inputs.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.threads is not None:
        if args.threads < 1:
            return _usage(parser, "--threads must be >= 1")
        import torch

        torch.set_num_threads(args.threads)
    if args.members is not None and args.members < 1:
        return _usage(parser, "--members must be >= 1")
    if args.target_std is not None and not args.target_std > 0:
        return _usage(parser, "--target-std must be > 0")
    if not 0 <= args.port <= 65535:
        return _usage(parser, f"--port {args.port} is not a port number (0-65535)")
    if args.checkpoint_every < 0:
        return _usage(parser, "--checkpoint-every must be >= 0")
    if bool(args.tls_cert) != bool(args.tls_key):
        return _usage(parser, "--tls-cert and --tls-key go together")
    try:
        args.tls = _read_tls(args.tls_cert, args.tls_key) if args.tls_cert else None
        args.token = _read_token(args.token_file)
    except UsageError as e:
        return _usage(parser, str(e))
    from rlhp.rpc import is_loopback

    if not is_loopback(args.host) and args.tls is None and not args.insecure:
        return _usage(parser, f"--host {args.host} is reachable from other machines: serve TLS (--tls-cert, "
                              "--tls-key), keep it on 127.0.0.1 (tunnel to it), or pass --insecure on a "
                              "network you trust")
    if not is_loopback(args.host):
        if args.tls is None:
            log.warning("listening on %s without TLS (--insecure): the token and the segments cross the "
                        "network in clear text", args.host)
        if not args.token:
            log.warning("listening on %s without a token: anyone who reaches the port can score with, and add "
                        "labels to, the reward model (--token-file)", args.host)
    try:
        if args.demo:
            return run_demo(args)
        return run_service(args)
    except UsageError as e:
        return _usage(parser, str(e))


def _read_tls(cert: str, key: str) -> tuple[bytes, bytes]:
    try:
        return Path(cert).read_bytes(), Path(key).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read the TLS certificate or key: {e.strerror}: {e.filename}") from None


def _read_token(path: str | None) -> str:
    """The shared token: from `path` (whitespace stripped), else $RLHP_REWARD_TOKEN, else ""."""
    from reward_service.client import TOKEN_ENV

    if not path:
        return os.environ.get(TOKEN_ENV, "").strip()
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read --token-file {path}: {getattr(e, 'strerror', None) or e}") from None
    if not token or any(ch.isspace() for ch in token):
        raise UsageError(f"--token-file {path} must hold one token (no spaces), not {'nothing' if not token else 'several words'}")
    return token


def _usage(parser: argparse.ArgumentParser, message: str) -> int:
    print(f"{parser.prog}: error: {message}\n(see {parser.prog} --help)", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------------------------


def run_service(args: argparse.Namespace) -> int:
    from reward_service.server import serve

    model = _build_model(args)
    try:
        server = serve(model, host=args.host, port=args.port, max_workers=args.max_workers, tls=args.tls,
                       token=args.token or None)
    except (OSError, RuntimeError) as e:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {e}") from None
    stop = StopFlag()  # not threading.Event: its set() can deadlock in a signal handler
    previous = stop.set_on_signals()
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(f"{server.port}\n")
        os.replace(args.port_file + ".tmp", args.port_file)
    space = model.space.to_string() if hasattr(model, "space") else args.space
    log.info("reward service for %s listening on %s:%d (checkpoints: %s)", space, args.host, server.port,
             args.checkpoint_dir or "none: pass --checkpoint-dir to keep the model")
    if not args.no_train:
        model.start()
    try:
        every = args.checkpoint_every if args.checkpoint_dir else 0
        while not stop.wait(timeout=every or None):
            _checkpoint(model, "periodic")
    finally:
        log.info("stopping (%s)", stop.reason or "exit")
        server.stop(grace=5.0)
        if not args.no_train:
            model.stop()
        if args.checkpoint_dir:
            _checkpoint(model, "final")
        for s, handler in previous.items():
            signal.signal(s, handler)
    log.info("reward service stopped")
    return 0


def _checkpoint(model, why: str) -> None:
    try:
        path, version = model.checkpoint()
        log.info("%s checkpoint of version %d written to %s", why, version, path)
    except Exception as e:  # noqa: BLE001 — a failed checkpoint must not kill the service
        log.error("%s checkpoint failed: %s", why, e)


# ---------------------------------------------------------------------------------------------
# --demo


def _demo_batch(rng: np.random.Generator, space: Space, n: int, length: int, w_obs: np.ndarray,
                w_act: np.ndarray, start: int, prefix: str):
    """`n` segments of `length` transitions with a known linear reward; returns (segments, returns)."""
    from reward_service.types import SegmentData

    segments, returns = [], []
    for i in range(n):
        # Each segment drifts around its own offset so that returns differ between segments.
        offset = rng.normal(size=space.obs_shape)
        if space.obs_dtype == "uint8":
            obs = rng.integers(0, 256, size=(length, *space.obs_shape), dtype=np.uint8)
            feat = obs.reshape(length, -1).astype(np.float32) / 255.0
        else:
            obs = (offset + 0.3 * rng.normal(size=(length, *space.obs_shape))).astype(space.obs_dtype)
            feat = obs.reshape(length, -1).astype(np.float32)
        if space.action_kind == "discrete":
            act = rng.integers(0, space.action_n, size=length).astype(np.int64)
            act_feat = np.eye(space.action_n, dtype=np.float32)[act]
        else:
            act = rng.uniform(-1, 1, size=(length, *(space.act_shape or (1,)))).astype(np.float32)
            act_feat = act.reshape(length, -1)
        reward = feat @ w_obs + act_feat @ w_act
        segments.append(SegmentData(f"{prefix}{start + i}", obs, act))
        returns.append(float(reward.sum()))
    return segments, np.asarray(returns)


def run_demo(args: argparse.Namespace) -> int:
    from reward_service.client import RewardClient
    from reward_service.core import RewardModel
    from reward_service.server import serve
    from reward_service.types import ComparisonData

    space = _parse_space(args.space or "11/box:3")
    checkpoint_dir = args.checkpoint_dir or tempfile.mkdtemp(prefix="rlhp-reward-demo-")
    config = _config(args, space)
    rng = np.random.default_rng(args.seed or 0)
    obs_dim = int(np.prod(space.obs_shape))
    w_obs = rng.normal(size=obs_dim).astype(np.float32) / np.sqrt(obs_dim)
    w_act = 0.5 * rng.normal(size=space.action_dim).astype(np.float32) / np.sqrt(space.action_dim)
    length = 25 if space.is_image else 20

    model = RewardModel(space, config, checkpoint_dir=checkpoint_dir)
    server = serve(model, host="127.0.0.1", port=0 if args.port == 50051 else args.port)
    model.start()
    print(f"demo: reward service for {space.to_string()} listening on {server.address} "
          f"({config.members} members); a synthetic labeler with a known linear reward connects "
          f"over gRPC and sends {args.demo_comparisons} comparisons", flush=True)
    client = RewardClient(server.address)
    try:
        held_out, true_returns = _demo_batch(rng, space, 60, length, w_obs, w_act, 0, "heldout-")
        held_obs = np.concatenate([s.observations for s in held_out])
        held_act = np.concatenate([s.actions for s in held_out])

        def correlation() -> tuple[float, int]:
            rewards, version = client.score(held_obs, held_act)
            predicted = rewards.reshape(len(held_out), length).sum(axis=1)
            if np.std(predicted) == 0:
                return 0.0, version
            return float(np.corrcoef(predicted, true_returns)[0, 1]), version

        sent = 0
        batch = 50
        start = time.monotonic()
        deadline = start + args.demo_seconds
        next_batch = start
        corr = 0.0
        print(f"{'t[s]':>5} {'version':>7} {'comparisons':>11} {'val acc':>7} {'pearson r':>9}", flush=True)
        while time.monotonic() < deadline:
            now = time.monotonic()
            if sent < args.demo_comparisons and now >= next_batch:
                n = min(batch, args.demo_comparisons - sent)
                segs, rets = _demo_batch(rng, space, 2 * n, length, w_obs, w_act, 2 * sent, "seg-")
                comparisons = []
                for k in range(n):
                    a, b = rets[2 * k], rets[2 * k + 1]
                    answer = Preference.EQUAL if abs(a - b) < 1e-3 else (
                        Preference.LEFT if a > b else Preference.RIGHT)
                    comparisons.append(ComparisonData(f"q{sent + k}", segs[2 * k].id, segs[2 * k + 1].id, answer))
                client.add_comparisons(segs, comparisons)
                sent += n
                next_batch = now + 0.7 * args.demo_seconds / max(1, -(-args.demo_comparisons // batch))
            time.sleep(min(3.0, max(0.0, deadline - time.monotonic())))
            stats = client.stats()
            corr, version = correlation()
            print(f"{time.monotonic() - start:5.0f} {version:7d} {stats.comparisons:11d} "
                  f"{stats.val_accuracy:7.2f} {corr:9.3f}", flush=True)
        rewards, version = client.score(held_obs[:256], held_act[:256])
        print(f"demo: scored a batch of {len(rewards)} transitions with model version {version}: "
              f"mean {rewards.mean():+.3f}, std {rewards.std():.3f}", flush=True)
        path, version = client.checkpoint()
        print(f"demo: checkpoint of version {version} written to {path}", flush=True)
        print(f"demo: Pearson correlation of predicted and true returns on {len(held_out)} held-out "
              f"segments: {corr:.3f}", flush=True)
    finally:
        client.close()
        server.stop(grace=1.0)
        model.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
