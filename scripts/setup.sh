#!/usr/bin/env bash
# One-time (idempotent) setup for a fresh machine: .venv, pinned dependencies, system libraries.
# Called by `make demo` and `make test`; safe to run again (it only does what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=".venv"
STAMP="$VENV/.splatkit-installed"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi

# Reinstall only when the pins or the package metadata changed.
want="$(cat requirements.lock pyproject.toml setup.py | sha256sum | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
    echo "[setup] installing pinned dependencies (torch==2.13.0 CPU wheel, no torchvision); this takes a few minutes the first time"
    # The pip warnings about unreadable local index folders are harmless on the reference machine; keep the log quiet.
    "$VENV/bin/python" -m pip install -q -c requirements.lock "torch==2.13.0" 2>&1 | grep -v "is ignored: it is neither" || true
    "$VENV/bin/python" -m pip install -q -c requirements.lock -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
    "$VENV/bin/python" -c "import torch, gsplat, tyro, imageio, pycolmap" \
        || { echo "[setup] dependency install failed (see the pip output above)"; exit 1; }
    echo "$want" > "$STAMP"
fi

# open3d links against libusb-1.0 at import time; Debian images often lack it.
if ! "$VENV/bin/python" -c "import open3d" >/dev/null 2>&1; then
    o3d_err="$("$VENV/bin/python" -c "import open3d" 2>&1 || true)"
    if grep -q "libusb" <<<"$o3d_err"; then
        if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
            echo "[setup] installing system library libusb-1.0-0 (needed by open3d)"
            (apt-get install -y -qq libusb-1.0-0 >/dev/null 2>&1) \
                || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libusb-1.0-0 >/dev/null 2>&1) \
                || { echo "[setup] could not install libusb-1.0-0; run: sudo apt-get install -y libusb-1.0-0"; exit 1; }
        else
            echo "[setup] open3d needs the system library libusb-1.0-0. Run: sudo apt-get install -y libusb-1.0-0"
            exit 1
        fi
    fi
    "$VENV/bin/python" -c "import open3d" >/dev/null 2>&1 \
        || { echo "[setup] open3d still fails to import:"; "$VENV/bin/python" -c "import open3d"; exit 1; }
fi
