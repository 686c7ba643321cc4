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

# -n 2 --dist loadfile: two worker processes, each taking whole test files (a file's app
# fixture starts once). Every test process runs one compute thread, and most of the time goes on
# starting processes (imports), so two workers keep both cores of a 2-core machine busy: on the
# slower 2-core EPYC VM the suite went from about 26 min to 19. Pass -n 0 to run in one process.
# --durations: the slowest tests are listed at the end of every run, so a slow one is seen early.
python -m pytest -n 2 --dist loadfile --durations=25 "$@"
