#!/usr/bin/env bash
# Install everything the test suite needs, then run it (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
python -m pip install --quiet --disable-pip-version-check --no-deps -e .

# Headless Chromium for the browser tests, from Debian's packages.
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

# --durations: the slowest tests are listed at the end of every run, so a slow one is seen early.
python -m pytest --durations=25 "$@"
