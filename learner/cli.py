"""`rlhp` — the one command of the project. Each subcommand lives in the package that owns it and
exposes `main(argv) -> int`; they are imported lazily so `rlhp --help` is instant."""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "train": ("learner.train_cli", "train an agent from preferences only (services, teacher, RLlib)"),
    "evaluate": ("learner.evaluate", "report the true return of a saved policy, optionally with a video"),
    "plot": ("learner.plot", "draw learning curves of a run directory (PNG)"),
    "status": ("learner.status", "print the live table of a run's (or a cluster's) experiments"),
    "label": ("query_service.web.app", "label queries in your browser (serves a local page)"),
    "teacher": ("query_service.teacher", "run a synthetic labeler that answers from true rewards"),
    "token": ("query_service.admin", "create, list or revoke labeler tokens; print the labeling URL"),
    "labelers": ("query_service.quality_cli", "labeler quality (gold, agreement); exclude or include a labeler"),
    "labels": ("query_service.labelsets", "export a run's labels (JSON Lines, with provenance) or import them"),
    "query-service": ("query_service.__main__", "run the query service (segments, queries, labels)"),
    "reward-service": ("reward_service.__main__", "run the reward-model service (ensemble over gRPC)"),
}


def usage() -> str:
    lines = ["usage: rlhp COMMAND [options]   (rlhp COMMAND --help for each)", "",
             "Reinforcement learning from human preferences.", "", "commands:"]
    lines += [f"  {name:<15} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"rlhp: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    # gRPC's C core logs at INFO by default ("fork_posix.cc ... skipping fork() handlers" each time
    # Ray forks): the terminal is for people. Read when grpc loads, so set before any import.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
