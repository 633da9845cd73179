#!/usr/bin/env bash
# Idempotent set-up for a Debian machine: the system packages distren renders with, then a .venv
# holding distren (editable) and its test tools. Runs in seconds when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

need=()
command -v povray >/dev/null 2>&1 || need+=(povray)
[ -f /usr/share/povray-3.7/include/colors.inc ] || need+=(povray-includes)
# POV-Ray's own example animations are the test suite's and benchmark's real scenes.
[ -d /usr/share/povray-3.7/scenes/animations ] || need+=(povray-examples)
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
command -v python3 >/dev/null 2>&1 || need+=(python3)
# The dashboard's browser test drives Debian's Chromium (Playwright cannot download its own here).
[ -x /usr/bin/chromium ] || need+=(chromium)
if ((${#need[@]})); then
  echo "setup: installing system packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

stamp=.venv/.installed
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  touch "$stamp"
fi

# Blender as a Python module, the Blender backend (PyPI's bpy: Python 3.11 only, ~940 MB
# installed, needs numpy < 2). A server without it renders POV-Ray only, and says so.
if [ ! -f .venv/.installed-bpy ] && .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  .venv/bin/pip install -q 'bpy==5.0.1' 'numpy<2'
  touch .venv/.installed-bpy
fi
