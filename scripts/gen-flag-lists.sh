#!/usr/bin/env bash
# Regenerates src/inventory/flags/: the flag NAMES (no dashes, no types or defaults) each component accepts,
# per Kubernetes minor and per etcd minor, from the upstream reference lists (`--name<TAB>type<TAB>...`).
# Validation embeds these lists to refuse an `extraArgs` flag the component would not start with.
#
#   scripts/gen-flag-lists.sh REF_DIR
#
# REF_DIR holds the reference lists: `vMAJOR.MINOR/<component>.txt` per Kubernetes minor (the newest
# minor may instead be the top-level `<component>.txt`, named by its header line), `etcd.txt` (3.5) and
# `etcd-3.6.txt`.
set -euo pipefail
ref=${1:?usage: $0 REF_DIR}
out=$(cd "$(dirname "$0")/.." && pwd)/src/inventory/flags
components=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

names() { # FILE -> sorted flag names
  grep -v '^#' "$1" | cut -f1 | sed -n 's/^--//p' | LC_ALL=C sort -u
}
header() { # FILE -> one comment line naming the source
  printf '# flag names from %s (%s)\n' "$(basename "$1")" "$(sed -n '1s/^# //p' "$1")"
}

for minor in 33 34 35; do
  mkdir -p "$out/v1.$minor"
  for c in "${components[@]}"; do
    src="$ref/v1.$minor/$c.txt"
    if [[ ! -f $src ]] && grep -q "Kubernetes v1.$minor\$" "$ref/$c.txt" 2>/dev/null; then
      src="$ref/$c.txt"
    fi
    [[ -f $src ]] || { echo "no reference list for $c v1.$minor under $ref" >&2; exit 1; }
    { header "$src"; names "$src"; } >"$out/v1.$minor/$c.txt"
  done
done
{ header "$ref/etcd.txt"; names "$ref/etcd.txt"; } >"$out/etcd-3.5.txt"
{ header "$ref/etcd-3.6.txt"; names "$ref/etcd-3.6.txt"; } >"$out/etcd-3.6.txt"
echo "wrote $out"
