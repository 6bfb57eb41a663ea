#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian (bookworm) machine. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
[ "$(id -u)" -eq 0 ] || { echo "install-test-deps.sh must run as root" >&2; exit 1; }
apt_install openssl openssh-server openssh-client sudo fish curl iproute2 socat
