#!/usr/bin/env bash
# Installs the Debian packages the test suite needs on a fresh Debian (bookworm) machine. Idempotent.
# (The test bundle builder and the lab's host-tools script install their own extras.)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
[ "$(id -u)" -eq 0 ] || { echo "install-test-deps.sh must run as root" >&2; exit 1; }
# openssl: PKI checks; openssh-server + sudo: real sshd tests; fish: bundle env scripts;
# etcd-server/etcd-client + containerd: the contract doubles' cluster test; python3-pip: wheels.
apt_install openssl openssh-server openssh-client sudo strace fish curl iproute2 socat \
  etcd-server etcd-client containerd python3-pip
# cargo-nextest runs the host tiers' tests (scripts/test-all.sh); machines of this kind come with it.
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
