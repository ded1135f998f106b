#!/usr/bin/env bash
# Install what vmsnap needs to build and test on Debian 12, if it is not there yet.
# Idempotent: packages already installed are not fetched again.
set -euo pipefail

PACKAGES=(
	build-essential cmake pkg-config git
	liblz4-dev libcurl4-openssl-dev libssl-dev libcmocka-dev
	clang libclang-rt-14-dev            # libFuzzer and sanitizer runtimes
	qemu-system-x86                     # the peer benchmarks compare with
	busybox-static iproute2 acpica-tools
	openssl                             # CLI: test certificates (migrate_*.sh)
	# tests/integration/migrate_netns.sh needs ip netns/veth/tc (iproute2) and tc netem; the
	# dev/CI kernel (6.18, no modules) lacks sch_netem, so it falls back to tbf + a python wire
	python3
)

missing=()
for p in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	echo "deps: all ${#PACKAGES[@]} packages present"
	exit 0
fi
echo "deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "deps: done"
