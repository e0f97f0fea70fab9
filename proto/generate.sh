#!/usr/bin/env bash
# Regenerate the committed Python stubs (_pb2.py, _pb2_grpc.py, .pyi) from proto/rlhp/v1/*.proto.
# The tool versions are pinned so that the output is byte-for-byte reproducible; the test
# tests/proto/test_stubs_drift.py fails when the committed stubs differ from a fresh generation.
#
#   bash proto/generate.sh            # write stubs next to the .proto files
#   bash proto/generate.sh OUT_DIR    # write them under OUT_DIR instead (used by the drift test)
set -euo pipefail
GRPCIO_TOOLS_VERSION="1.85.1"
MYPY_PROTOBUF_VERSION="5.1.0"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here}"
PY="${PYTHON:-python}"

have() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
if [ "$(have grpcio-tools)" != "$GRPCIO_TOOLS_VERSION" ] || [ "$(have mypy-protobuf)" != "$MYPY_PROTOBUF_VERSION" ]; then
  echo "proto/generate.sh needs grpcio-tools==$GRPCIO_TOOLS_VERSION and mypy-protobuf==$MYPY_PROTOBUF_VERSION" >&2
  echo "  found grpcio-tools=$(have grpcio-tools) mypy-protobuf=$(have mypy-protobuf)" >&2
  echo "  install them with: pip install -e '.[dev]'" >&2
  exit 1
fi

mkdir -p "$out/rlhp/v1"
cd "$here"
"$PY" -m grpc_tools.protoc -I . \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" \
  rlhp/v1/*.proto
echo "generated stubs for $(ls rlhp/v1/*.proto | tr '\n' ' ')in $out/rlhp/v1"
