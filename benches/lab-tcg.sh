#!/usr/bin/env bash
# Benchmark (not a test): the lab's software-emulated VMs with QEMU translation caches of several sizes.
# For each size: a 3-VM lab (`lab up --translation-cache MIB`), a cold `kubeforge apply` (one control plane
# + two workers, artifacts from the test bundle), a no-op re-apply, a fixed set of guest commands on node1
# (5 x systemctl is-active, kubectl get nodes, curl of the kubelet's healthz), and the QEMU processes'
# resident memory after all that. Prints one row per size.
#
#   bash benches/lab-tcg.sh                 # as root; SIZES="64 256 1024" by default
#   KF=target/debug/kubeforge bash benches/lab-tcg.sh   # another build (default: a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "benches/lab-tcg.sh needs root (network namespaces, VMs)" >&2; exit 1; }

SIZES=${SIZES:-64 256 1024}
BUNDLE_DIR=${BUNDLE_DIR:-$HOME/.cache/kubeforge/test-bundle}
bash tests/lab/install-host-deps.sh >/dev/null
if [ -z "${KF:-}" ]; then
  cargo build --release -p kubeforge -q
  KF=target/release/kubeforge
fi
KF=$(readlink -f "$KF")
[ -f "$BUNDLE_DIR/manifest.json" ] || bash tests/bundle/build.sh "$BUNDLE_DIR" >/dev/null
if [ -e /dev/kvm ] && { [ -e /sys/module/kvm_intel ] || [ -e /sys/module/kvm_amd ]; }; then
  echo "this host has KVM: the lab does not emulate, there is no translation cache to size" >&2
  exit 1
fi
OUT=$(mktemp -d -t kf-lab-tcg.XXXXXX)
LAB=""; W=$OUT
cleanup() { [ -n "$LAB" ] && (cd "$W" && "$KF" lab down --name "$LAB" >/dev/null 2>&1) || true; }
trap cleanup EXIT

secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
rows=()
for mib in $SIZES; do
  LAB=tcg$mib
  W=$OUT/$mib && mkdir -p "$W" && cd "$W"
  t0=$(date +%s.%N)
  "$KF" lab up --name "$LAB" --bundle "$BUNDLE_DIR" --translation-cache "$mib" >up.txt 2>&1 || { cat up.txt; exit 1; }
  t1=$(date +%s.%N)
  INV=lab/$LAB/inventory.yaml
  "$KF" lab exec --name "$LAB" -- "$KF" apply -i "$INV" --ignore-preflight-errors=cpu,memory >cold.txt 2>&1 \
    || { cat cold.txt; exit 1; }
  t2=$(date +%s.%N)
  "$KF" lab exec --name "$LAB" -- "$KF" apply -i "$INV" --ignore-preflight-errors=cpu,memory >noop.txt 2>&1 \
    || { cat noop.txt; exit 1; }
  grep -q "apply: 0 changes" noop.txt || { echo "the re-apply changed something:"; cat noop.txt; exit 1; }
  t3=$(date +%s.%N)
  ops=$("$KF" lab ssh --name "$LAB" node1 -- 's=$(date +%s%N); for i in 1 2 3 4 5; do systemctl is-active --quiet kubelet;
    kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes >/dev/null; curl -sf http://127.0.0.1:10248/healthz >/dev/null; done;
    echo $(( ($(date +%s%N) - s) / 1000000 ))')
  rss=$(ps -o rss= -C qemu-system-x86_64 | awk '{s+=$1} END {printf "%d", s/1024}')
  "$KF" lab down --name "$LAB" >/dev/null
  LAB=""
  cd - >/dev/null
  rows+=("$(printf '| %6s | %6s s | %6s s | %5s s | %6.1f s | %6s MiB |' "$mib" "$(secs "$t0" "$t1")" "$(secs "$t1" "$t2")" \
    "$(secs "$t2" "$t3")" "$(awk -v m="$ops" 'BEGIN{print m/1000}')" "$rss")")
done
echo
echo "3 VMs x 1 vCPU x 1024 MiB under TCG; apply of 1 control plane + 2 workers from the test bundle ($KF)"
echo "| tb MiB | lab up | cold apply | no-op | guest commands (15) | QEMU RSS (3 VMs) |"
echo "|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
