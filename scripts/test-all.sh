#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine, as root: installs what the tests need, then runs every
# tier in order (static checks, unit + golden, real sshd, real etcd/kubectl with the contract doubles, VM
# end-to-end), printing the wall time of each stage. This is the README's test command; .ci/run calls it.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
export CARGO_TERM_COLOR=never
# Tiers that need real machines run for real here; a missing prerequisite fails them instead of skipping.
export KUBEFORGE_E2E=${KUBEFORGE_E2E:-1}

fail=0
run() { stage "$@" || fail=1; }

run "install test packages" bash scripts/install-test-deps.sh
run "cargo fmt --check" cargo fmt --all -- --check
run "cargo build" cargo build --workspace --all-targets
run "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
run "tests (all tiers)" cargo test --workspace -- --test-threads=2

stage_summary
if [ $fail -ne 0 ]; then
  echo "some stages FAILED"
  exit 1
fi
echo "all stages passed"
