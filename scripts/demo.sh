#!/usr/bin/env bash
# The main job, end to end, on a fresh Debian machine as root:
#   1. install the host tools (QEMU, mmdebstrap, ...) and build kubeforge;
#   2. build the test artifact bundle (real etcd, etcdctl, kubectl; contract doubles of the five
#      Kubernetes server binaries, because official ones cannot be downloaded here);
#   3. boot a lab of VMs and write its inventory;
#   4. `kubeforge apply` onto the VMs, then a second apply that must report 0 changes;
#   5. check the cluster with real kubectl and etcdctl from inside the lab network, and `kubeforge status`
#      (one probe per host: units, drift, Node readiness, etcd health; exits non-zero when unhealthy);
#   6. tear the lab down (KEEP_LAB=1 keeps it).
# With internet access, set RELEASE_SOURCE=official to install the official release binaries instead of
# the test bundle (the inventory then uses the default release source).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

LAB=${LAB:-demo}
NODES=${NODES:-3}
TOPOLOGY=${TOPOLOGY:-default}
KUBE_VERSION=${KUBE_VERSION:-v1.37.1}
BUNDLE_DIR=${BUNDLE_DIR:-$HOME/.cache/kubeforge/test-bundle}

[ "$(id -u)" -eq 0 ] || { echo "demo.sh needs root (network namespaces, VMs)" >&2; exit 1; }

cleanup() {
  if [ "${KEEP_LAB:-0}" != 1 ] && [ -x target/release/kubeforge ]; then
    stage "lab down" target/release/kubeforge lab down --name "$LAB" || true
  fi
  stage_summary
}
trap cleanup EXIT

stage "install host tools" bash tests/lab/install-host-deps.sh
# kubeforge, kubeforge-apilb (the node-local API balancer of HA clusters, installed from beside kubeforge) and
# the contract doubles, in one release build of the workspace.
stage "build kubeforge (release)" cargo build --release --workspace --bins
stage "build test bundle" env BUNDLE_PROFILE=release bash tests/bundle/build.sh "$BUNDLE_DIR"

bundle_args=(--bundle "$BUNDLE_DIR")
[ "${RELEASE_SOURCE:-bundle}" = official ] && bundle_args=()
stage "lab up" target/release/kubeforge lab up --name "$LAB" --nodes "$NODES" --topology "$TOPOLOGY" \
  --kubernetes-version "$KUBE_VERSION" "${bundle_args[@]}" --timings
INV=lab/$LAB/inventory.yaml
echo "--- inventory written by the lab:"; cat "$INV"

kf() { target/release/kubeforge lab exec --name "$LAB" -- "$PWD/target/release/kubeforge" "$@"; }
# Lab VMs have one vCPU and 1 GiB: below a production control plane's minimum, so those two checks warn.
stage "apply --dry-run" kf apply -i "$INV" --dry-run --ignore-preflight-errors=cpu,memory
stage "apply" kf apply -i "$INV" --ignore-preflight-errors=cpu,memory
stage "apply again (expect 0 changes)" bash -c \
  "$(declare -f kf); LAB=$LAB INV=$INV; kf apply -i \"\$INV\" --ignore-preflight-errors=cpu,memory | tee /dev/stderr | grep -q 'apply: 0 changes'"

stage "kubeforge status (expect healthy)" kf status -i "$INV"

KUBECONFIG_ADMIN=lab/$LAB/pki/$LAB/admin.conf
stage "kubectl get nodes" target/release/kubeforge lab exec --name "$LAB" -- \
  kubectl --kubeconfig "$KUBECONFIG_ADMIN" get nodes -o wide
echo
echo "What ran: etcd, etcdctl, kubectl, containerd, runc, the CNI plugins, systemd and OpenSSH are real."
echo "kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy are CONTRACT DOUBLES"
echo "from the test bundle (tests/doubles), because the official binaries cannot be downloaded here."
