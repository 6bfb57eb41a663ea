#!/usr/bin/env bash
# Regenerates src/inventory/flags/: the flag NAMES (no dashes, no types or defaults) each component accepts,
# per Kubernetes minor and per etcd minor, from the upstream reference lists (`--name<TAB>type<TAB>...`).
# Validation embeds these lists to refuse an `extraArgs` flag the component would not start with.
#
#   scripts/gen-flag-lists.sh REF_DIR [REF_DIR...]
#   e.g. scripts/gen-flag-lists.sh docs/reference/flags ../shared/reference/flags
#
# Each REF_DIR holds reference lists: `vMAJOR.MINOR/<component>.txt` per Kubernetes minor (a minor may
# instead be the top-level `<component>.txt`, named by its header line), `etcd.txt` (3.5) and
# `etcd-3.6.txt`. The first REF_DIR that has a list wins, so docs/reference/flags (v1.36+, written by
# scripts/reference/extract-flags.py) goes first and shared/reference/flags supplies v1.33-v1.35 and etcd.
# Adding a minor: write docs/reference/flags/vX.Y/ with extract-flags.py, add it to MINORS below, run this.
set -euo pipefail
[[ $# -ge 1 ]] || { echo "usage: $0 REF_DIR [REF_DIR...]" >&2; exit 2; }
refs=("$@")
out=$(cd "$(dirname "$0")/.." && pwd)/src/inventory/flags
components=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
MINORS=(33 34 35 36 37)

names() { # FILE -> sorted flag names
  grep -v '^#' "$1" | cut -f1 | sed -n 's/^--//p' | LC_ALL=C sort -u
}
header() { # FILE -> one comment line naming the source
  printf '# flag names from %s (%s)\n' "$(basename "$1")" "$(sed -n '1s/^# //p' "$1")"
}

find_list() { # MINOR COMPONENT -> path of the first matching list, or nothing
  local ref
  for ref in "${refs[@]}"; do
    if [[ -f $ref/v1.$1/$2.txt ]]; then
      echo "$ref/v1.$1/$2.txt"
      return
    fi
    if grep -q "Kubernetes v1.$1\$" "$ref/$2.txt" 2>/dev/null; then
      echo "$ref/$2.txt"
      return
    fi
  done
}
find_file() { # NAME -> first REF_DIR/NAME
  local ref
  for ref in "${refs[@]}"; do
    [[ -f $ref/$1 ]] && { echo "$ref/$1"; return; }
  done
  echo "no $1 under ${refs[*]}" >&2
  exit 1
}

for minor in "${MINORS[@]}"; do
  mkdir -p "$out/v1.$minor"
  for c in "${components[@]}"; do
    src=$(find_list "$minor" "$c")
    [[ -n $src ]] || { echo "no reference list for $c v1.$minor under ${refs[*]}" >&2; exit 1; }
    { header "$src"; names "$src"; } >"$out/v1.$minor/$c.txt"
  done
done
etcd35=$(find_file etcd.txt)
etcd36=$(find_file etcd-3.6.txt)
{ header "$etcd35"; names "$etcd35"; } >"$out/etcd-3.5.txt"
{ header "$etcd36"; names "$etcd36"; } >"$out/etcd-3.6.txt"
echo "wrote $out"
