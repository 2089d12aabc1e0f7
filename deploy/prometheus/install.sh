#!/usr/bin/env bash
# Installs Debian's prometheus package (Prometheus and promtool 2.42) into $EVENTMAIL_CACHE/prometheus
# without touching the system: `apt-get download` fetches the .deb as an ordinary file and `dpkg -x`
# unpacks it; nothing is registered with dpkg and no service is set up. Links in $EVENTMAIL_CACHE/bin.
#
# The two binaries need only libc (>= 2.34; they are Go programs linked against it) at run time. The
# package's other dependencies (adduser, init-system-helpers, the JavaScript libraries of the web
# console) serve the system service and the classic web UI, which the tests do not use.
#
# Needs apt (a Debian or Ubuntu machine with Debian's bookworm packages or newer in its sources).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cache=${EVENTMAIL_CACHE:-$root/.cache}
dest=$cache/prometheus
bin=$cache/bin
wanted=2.42

installed_version() {
    "$dest/usr/bin/promtool" --version 2>/dev/null | sed -n 's/^promtool, version \([0-9.]*\).*/\1/p'
}

if [[ "$(installed_version)" == "$wanted".* ]]; then
    mkdir -p "$bin"
    ln -sf "$dest/usr/bin/prometheus" "$dest/usr/bin/promtool" "$bin/"
    exit 0
fi

command -v apt-get >/dev/null || { echo "install.sh: apt-get is needed to fetch Debian's prometheus" >&2; exit 1; }
work=$(mktemp -d)
chmod 755 "$work"  # apt-get download writes as the _apt user where it can
trap 'rm -rf "$work"' EXIT
# The package lists are refreshed only when apt does not know the package (a fresh container).
if ! apt-cache show prometheus >/dev/null 2>&1; then
    echo "install.sh: apt does not know prometheus; running apt-get update" >&2
    apt-get update -qq
fi
(cd "$work" && apt-get download -qq prometheus)
deb=$(ls "$work"/prometheus_*.deb)
rm -rf "$dest"
mkdir -p "$dest" "$bin"
dpkg -x "$deb" "$dest"
version=$(installed_version)
if [[ "$version" != "$wanted".* ]]; then
    echo "install.sh: $deb holds promtool $version, expected $wanted.x" >&2
    exit 1
fi
ln -sf "$dest/usr/bin/prometheus" "$dest/usr/bin/promtool" "$bin/"
echo "prometheus and promtool $version in $dest/usr/bin (linked from $bin)"
