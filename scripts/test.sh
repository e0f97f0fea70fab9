#!/usr/bin/env bash
# The test suite: everything but the `ray up` cluster test, which .ci/run and operators run alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export MUJOCO_GL="${MUJOCO_GL:-osmesa}" PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-osmesa}"
exec python -m pytest -q -ra "$@"
