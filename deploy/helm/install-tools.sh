#!/usr/bin/env bash
# Installs helm and kubeconform with `go install` into $EVENTMAIL_CACHE/bin (once; cached).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cache=${EVENTMAIL_CACHE:-$root/.cache}
bin=$cache/bin
mkdir -p "$bin"
export GOBIN=$bin GOPATH=$cache/go GOMODCACHE=$cache/go/mod GOFLAGS=-mod=mod
[ -x "$bin/helm" ] || go install helm.sh/helm/v3/cmd/helm@v3.16.4
[ -x "$bin/kubeconform" ] || go install github.com/yannh/kubeconform/cmd/kubeconform@v0.6.7
