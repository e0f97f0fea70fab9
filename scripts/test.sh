#!/usr/bin/env bash
# The whole test suite, as CI runs it: unit and contract tests, real gRPC servers and SQLite, a real
# browser, learning runs on a local Ray cluster (marker `slow`) and the `ray up` test over a private
# sshd on 127.0.0.1 (marker `cluster`). Pass pytest options through, e.g.
#   bash scripts/test.sh -m "not slow and not cluster"     # the quick part (~5 min)
#   bash scripts/test.sh -m cluster                          # only the ray up test
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export MUJOCO_GL="${MUJOCO_GL:-osmesa}" PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-osmesa}"
export GRPC_VERBOSITY="${GRPC_VERBOSITY:-ERROR}"
exec python -m pytest -q -ra -p no:cacheprovider --durations=15 "$@"
