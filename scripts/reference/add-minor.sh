#!/usr/bin/env bash
# Adds a Kubernetes minor's flag reference data everywhere it is used, from one place:
#   1. docs/reference/flags/v1.N/<component>.txt for the five components, extracted from the generated
#      reference pages of kubernetes/website (--website-git DIR --rev COMMIT), or derived from v1.(N-1) and
#      docs/reference/flags/changes-1.N.tsv (the release notes' flag changes, each row naming its PR) when
#      the pages are not out yet;
#   2. src/inventory/flags/v1.N/ (names, for validation) with scripts/gen-flag-lists.sh;
#   3. the rows of src/inventory/flags.rs (LISTS, and CHANGES when changes-1.N.tsv exists);
#   4. the doubles' tables: tests/doubles/reference/flags/v1.N/ and the rows of tests/doubles/src/flags.rs,
#      and the minors the doubles accept.
# Then it lists what stays a decision (support window, default versions, release-note rules).
#
#   scripts/reference/add-minor.sh 38 --website-git WEBSITE.git --rev COMMIT
#   scripts/reference/add-minor.sh 38 --derive
# Env: SHARED_REF (default ../shared/reference/flags): the older minors' and etcd's reference lists.
# Idempotent: a row or list already there is left as it is.
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n '2,17p' "$0" >&2; exit 2; }
N=$1; shift
[[ $N =~ ^[0-9]+$ ]] || { echo "MINOR is a number, e.g. 38" >&2; exit 2; }
P=$((N - 1))
MODE=$1; shift
GIT_DIR= REV=
if [[ $MODE == --website-git ]]; then
  GIT_DIR=$1; shift
  [[ ${1:-} == --rev ]] || { echo "--website-git needs --rev COMMIT" >&2; exit 2; }
  REV=$2
elif [[ $MODE != --derive ]]; then
  echo "use --website-git DIR --rev COMMIT, or --derive" >&2; exit 2
fi
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
SHARED_REF=${SHARED_REF:-../shared/reference/flags}
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
DOCS=docs/reference/flags
CHANGES=$DOCS/changes-1.$N.tsv

# 1. The reference lists.
mkdir -p "$DOCS/v1.$N"
for c in "${COMPONENTS[@]}"; do
  out=$DOCS/v1.$N/$c.txt
  if [[ -n $GIT_DIR ]]; then
    python3 scripts/reference/extract-flags.py page --git-dir "$GIT_DIR" --rev "$REV" --component "$c" \
      --minor "1.$N" --source-note "kubernetes/website commit $REV (generated reference for v1.$N)" >"$out.tmp"
  else
    [[ -f $CHANGES ]] || { echo "--derive needs $CHANGES (the flag changes of the v1.$N release notes)" >&2; exit 1; }
    base=$DOCS/v1.$P/$c.txt
    [[ -f $base ]] || base=$SHARED_REF/v1.$P/$c.txt
    python3 scripts/reference/extract-flags.py derive --base "$base" --changes "$CHANGES" --component "$c" \
      --minor "1.$N" >"$out.tmp"
  fi
  mv "$out.tmp" "$out"
done
echo "wrote $DOCS/v1.$N/"

# 2. Names for validation.
if ! grep -q "^MINORS=(.*\b$N\b" scripts/gen-flag-lists.sh; then
  sed -i -E "s/^MINORS=\((.*)\)/MINORS=(\1 $N)/" scripts/gen-flag-lists.sh
fi
bash scripts/gen-flag-lists.sh "$DOCS" "$SHARED_REF"

# 3 and 4. Rows in the Rust tables, the doubles' copies.
mkdir -p "tests/doubles/reference/flags/v1.$N"
cp "$DOCS/v1.$N/"*.txt "tests/doubles/reference/flags/v1.$N/"
python3 - "$N" "$P" "$([[ -f $CHANGES ]] && echo yes || echo no)" <<'PY'
import re, sys
n, p, changes = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "yes"
comps = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"]

def edit(path, fn):
    s = open(path).read()
    t = fn(s)
    if t != s:
        open(path, "w").write(t)
        print(f"edited {path}")

def lists(s):
    if f'("kube-apiserver", {n}, ' in s:
        return s
    last = f'    ("kube-proxy", {p}, include_str!("flags/v1.{p}/kube-proxy.txt")),\n'
    assert last in s, "src/inventory/flags.rs: no v1.%d rows to add after" % p
    rows = "".join(f'    ("{c}", {n}, include_str!("flags/v1.{n}/{c}.txt")),\n' for c in comps)
    s = s.replace(last, last + rows, 1)
    if changes and f"changes-1.{n}.tsv" not in s:
        m = re.search(r'    \((\d+), include_str!\("\.\./\.\./docs/reference/flags/changes-1\.\d+\.tsv"\)\),\n(?!    \(\d+, include)', s)
        assert m, "src/inventory/flags.rs: no CHANGES rows"
        row = f'    ({n}, include_str!("../../docs/reference/flags/changes-1.{n}.tsv")),\n'
        s = s[: m.end()] + row + s[m.end():]
    return s

edit("src/inventory/flags.rs", lists)

variants = {"kube-apiserver": "ApiServer", "kube-controller-manager": "ControllerManager",
            "kube-scheduler": "Scheduler", "kubelet": "Kubelet", "kube-proxy": "Proxy"}

def doubles(s):
    if f'({n}, ApiServer)' not in s:
        last = f'        ({p}, Proxy) => include_str!("../reference/flags/v1.{p}/kube-proxy.txt"),\n'
        assert last in s, "tests/doubles/src/flags.rs: no v1.%d rows" % p
        rows = "".join(f'        ({n}, {variants[c]}) => include_str!("../reference/flags/v1.{n}/{c}.txt"),\n' for c in comps)
        s = s.replace(last, last + rows, 1)
    return s.replace(f"(34 to {p})", f"(34 to {n})")

edit("tests/doubles/src/flags.rs", doubles)

def accepted(s):
    return (s.replace(f"(34..={p})", f"(34..={n})").replace(f"v1.34.x to v1.{p}.x", f"v1.34.x to v1.{n}.x")
             .replace(f"tables exist for 1.34 to 1.{p}", f"tables exist for 1.34 to 1.{n}"))

edit("tests/doubles/src/lib.rs", accepted)
PY

cat <<EOF

Flag data for v1.$N is in place. What stays a decision (see README, "Maintainers: adding a Kubernetes minor"):
  - src/inventory/validate.rs: SUPPORTED_MINORS / UPGRADE_SOURCE_MINORS (upstream's three newest are
    installed), DEFAULT_KUBERNETES_VERSION (the newest patch);
  - src/artifacts/versions.rs: the DEFAULTS row of v1.$N (etcd from kubeadm's constants, crictl from cri-tools,
    containerd/runc/CNI plugins), each value's source in docs/reference/;
  - the v1.$N Urgent Upgrade Notes: rows of MINOR_RULES (src/phase/preflight.rs) and VALUE_NOTES
    (src/inventory/flags.rs); removed flags need no row (they come from the lists, with the note from $CHANGES);
  - tests/bundle/build.sh K8S_VERSIONS (newest patches), then: cargo test -p kubeforge -p kubeforge-doubles.
EOF
