#!/usr/bin/env bash
# Install rlhp and everything it needs on a fresh Debian machine with Python 3.11 and pip.
#   bash scripts/install.sh          # runtime: system libraries, torch (CPU wheel), rlhp
#   bash scripts/install.sh --dev    # plus test tools and the headless browser for UI tests
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dev=0; [ "${1:-}" = "--dev" ] && dev=1

SUDO=""; [ "$(id -u)" != 0 ] && SUDO="sudo"
pkgs="libosmesa6 libgl1"
[ $dev = 1 ] && pkgs="$pkgs chromium chromium-driver"
# the `ray up` cluster test (tests/deploy/test_ray_up.py): a private sshd on 127.0.0.1, rsync, nc
[ $dev = 1 ] && pkgs="$pkgs openssh-server netcat-openbsd rsync"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ] && command -v apt-get >/dev/null; then
  echo "== apt-get install$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

# torch first, as the local CPU wheel: a plain `torch` requirement would pull CUDA wheels.
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
if [ $dev = 1 ]; then
  python -m pip install -q -e ".[dev]"
else
  python -m pip install -q -e .
fi
echo "== rlhp installed"
