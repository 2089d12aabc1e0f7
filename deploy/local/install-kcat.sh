#!/usr/bin/env bash
# Debian's kcat for README's kcat example (tests/test_readme.py runs it). Installed with apt-get when
# missing; needs root (CI and the dev machines are).
set -euo pipefail
if command -v kcat >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "kcat is missing: install Debian's package (sudo apt-get install kcat), then rerun" >&2
  exit 1
fi
echo "installing Debian's kcat (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends kcat >/dev/null 2>&1 \
  || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends kcat >/dev/null; }
command -v kcat >/dev/null
