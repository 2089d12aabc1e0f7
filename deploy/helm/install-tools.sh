#!/usr/bin/env bash
# Installs the chart tooling into $EVENTMAIL_CACHE/bin (once; cached), built from source with the local
# Go toolchain through the Go module proxy:
#   helm         chart lint and template
#   kubeconform  Kubernetes manifest validation (used offline, with local schemas only)
# Prometheus and promtool come from Debian's package: deploy/prometheus/install.sh (`make tools` runs both).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cache=${EVENTMAIL_CACHE:-$root/.cache}
bin=$cache/bin
mkdir -p "$bin"
export GOBIN=$bin GOPATH=$cache/go GOMODCACHE=$cache/go/mod GOFLAGS=-mod=mod

helm_version=v3.16.4
kubeconform_version=v0.6.7

# The release ldflags of helm's Makefile: without them a `go install`ed helm reports version "v3.16"
# and assumes Kubernetes 1.20 for capabilities and deprecation checks (helm 3.16 is built on the
# Kubernetes 1.31 client libraries).
helm_ldflags="-X helm.sh/helm/v3/internal/version.version=$helm_version"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=31"
done
if [ "$("$bin/helm" version --template '{{.Version}}' 2>/dev/null || true)" != "$helm_version" ]; then
    go install -ldflags "$helm_ldflags" "helm.sh/helm/v3/cmd/helm@$helm_version"
fi
[ -x "$bin/kubeconform" ] || go install "github.com/yannh/kubeconform/cmd/kubeconform@$kubeconform_version"

