#!/usr/bin/env bash
# Debian's chromium for the console's browser tests and screenshots (Playwright drives it; no browser
# is downloaded). Installed with apt-get when missing; needs root (CI and the dev machines are).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "chromium is missing: install Debian's package (sudo apt-get install chromium), then rerun" >&2
  exit 1
fi
echo "installing Debian's chromium (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null || apt-get update -q
apt-get install -y -q --no-install-recommends chromium >/dev/null
command -v chromium >/dev/null
