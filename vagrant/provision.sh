#!/usr/bin/env bash
# Run by the Vagrantfile on this computer (not in a machine): once the last machine is up, writes the
# inventory from `vagrant ssh-config` with `kubeforge inventory init` and installs the cluster with
# `kubeforge apply`; with --destroyed (the first machine was destroyed), moves the cluster state aside.
# Environment:
#   KUBEFORGE                        the kubeforge binary (default: `kubeforge` on PATH)
#   KUBEFORGE_VAGRANT_STATE          where the inventory, PKI and admin kubeconfig go (.kubeforge beside
#                                    the Vagrantfile)
#   KUBEFORGE_VAGRANT_CLUSTER        the cluster's name ("vagrant")
#   KUBEFORGE_VAGRANT_KUBERNETES_VERSION  ("v1.37.1", the newest supported release)
#   KUBEFORGE_VAGRANT_BUNDLE         install from this release bundle (air-gapped); default: the official
#                                    release source
#   KUBEFORGE_VAGRANT_ROLES          e.g. "node1=control-plane,etcd,worker node2=worker"
#   KUBEFORGE_VAGRANT_DRIVER         "qemu" adds `--emulated` (software-emulated machines)
#   KUBEFORGE_VAGRANT_APPLY_ARGS     more arguments for `kubeforge apply`
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
state=${KUBEFORGE_VAGRANT_STATE:-$here/.kubeforge}
kf=${KUBEFORGE:-kubeforge}

if [ "${1:-}" = --destroyed ]; then
  if [ -d "$state" ]; then
    aside="$state.destroyed-$(date -u +%Y%m%dT%H%M%SZ)"
    mv "$state" "$aside"
    echo "kubeforge: the cluster's machines are gone; its inventory and PKI are kept in $aside"
  fi
  exit 0
fi

args=(--cluster-name "${KUBEFORGE_VAGRANT_CLUSTER:-vagrant}"
      --kubernetes-version "${KUBEFORGE_VAGRANT_KUBERNETES_VERSION:-v1.37.1}")
[ -n "${KUBEFORGE_VAGRANT_BUNDLE:-}" ] && args+=(--bundle "$KUBEFORGE_VAGRANT_BUNDLE")
[ "${KUBEFORGE_VAGRANT_DRIVER:-kvm}" = qemu ] && args+=(--emulated)
for r in ${KUBEFORGE_VAGRANT_ROLES:-}; do args+=(--roles "$r"); done

mkdir -p "$state"
cd "$state"
if [ ! -f inventory.yaml ]; then
  # vagrant ssh-config turns host key checking off; kubeforge pins each machine's key on first contact.
  (cd "$here" && vagrant ssh-config) | tee ssh-config \
    | "$kf" inventory init --from-ssh-config - "${args[@]}" --accept-new-host-keys --out inventory.yaml
fi
# shellcheck disable=SC2086 # the extra arguments are words
"$kf" apply -i inventory.yaml ${KUBEFORGE_VAGRANT_APPLY_ARGS:-}
echo "kubeforge: cluster ready; kubectl --kubeconfig $state/pki/${KUBEFORGE_VAGRANT_CLUSTER:-vagrant}/admin.conf get nodes"
