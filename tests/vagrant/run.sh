#!/usr/bin/env bash
# The Vagrant tier, as root: `vagrant up` of one machine with every role (vagrant-libvirt, QEMU), from the lab
# image's box (one machine keeps the suite inside its time budget: the lab scenarios run three)
# -> the Vagrantfile's trigger: `vagrant ssh-config | kubeforge inventory init --from-ssh-config -` and
# `kubeforge apply` -> real kubectl sees every Node Ready, `kubeforge status` is healthy -> `vagrant destroy -f`
# leaves no domain, volume or network behind.
#
# Isolation: libvirtd, its network (bridge, dnsmasq) and the machines run only inside a network namespace
# made here, and so do vagrant, kubeforge and kubectl; nothing of the machines' network exists in this
# machine's own namespace (checked at the end: the same interfaces as before). systemd is not PID 1 here:
# the test starts libvirtd itself and stops it. libvirtd's control socket and state under /run, /var/lib
# and /etc/libvirt are the machine's, so a libvirtd that already runs is refused rather than shared, and
# /etc/libvirt/qemu.conf is put back as it was.
#
# Environment: KUBEFORGE (default target/debug/kubeforge), KUBEFORGE_TEST_BUNDLE (the release bundle),
# KUBEFORGE_TEST_KUBECTL (default kubectl), KEEP=1 keeps the scratch directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
KF=${KUBEFORGE:-$ROOT/target/debug/kubeforge}
BUNDLE=${KUBEFORGE_TEST_BUNDLE:?set KUBEFORGE_TEST_BUNDLE to the test artifact bundle}
KUBECTL=${KUBEFORGE_TEST_KUBECTL:-kubectl}
NODES=1
NS=kfvagrant$$
POOL=kubeforge-vagrant
WORK=$(mktemp -d /tmp/kf-vagrant.XXXXXX)
T0=$(date +%s)

say() { echo "[vagrant] $*"; }
fail() { echo "[vagrant] FAILED: $*" >&2; exit 1; }
# step NAME CMD...: runs CMD and prints its wall time.
step() {
  local name=$1 t
  shift
  t=$(date +%s%N)
  "$@" || fail "$name (exit $?)"
  say "$name ($(awk -v a="$t" -v b="$(date +%s%N)" 'BEGIN{printf "%.1f", (b-a)/1e9}')s)"
}
in_ns() { ip netns exec "$NS" "$@"; }
V() { in_ns virsh -q -c qemu:///system "$@"; }

[ "$(id -u)" -eq 0 ] || fail "needs root (network namespace, libvirtd)"
for t in vagrant libvirtd virsh qemu-system-x86_64 qemu-img dnsmasq ip python3 "$KF" "$KUBECTL"; do
  command -v "$t" >/dev/null || fail "$t is missing (tests/vagrant/install-host-deps.sh installs the tools)"
done
vagrant plugin list 2>/dev/null | grep -q vagrant-libvirt || fail "the vagrant-libvirt plugin is missing"
if pgrep -x libvirtd >/dev/null; then
  fail "a libvirtd runs already (pid $(pgrep -x libvirtd | tr '\n' ' ')); this test runs its own inside a network namespace"
fi
links_before=$(ip -br link | awk '{print $1}' | sort | tr '\n' ' ')

QEMU_CONF=/etc/libvirt/qemu.conf
had_conf=0
[ -f "$QEMU_CONF" ] && { cp -p "$QEMU_CONF" "$WORK/qemu.conf.orig"; had_conf=1; }
cleanup() {
  local rc=$?
  set +e
  if [ $rc -ne 0 ]; then
    for f in "$WORK"/serial/*.log; do [ -f "$f" ] && { echo "--- last lines of $f"; tail -n 15 "$f"; }; done
    [ -f "$WORK/libvirtd.log" ] && { echo "--- last lines of libvirtd's log"; tail -n 20 "$WORK/libvirtd.log"; }
    if [ -d "$WORK/dot" ] && [ -z "${DESTROYED:-}" ]; then
      in_ns env "${VENV[@]}" vagrant destroy -f >/dev/null 2>&1
    fi
    for d in $(V list --all --name 2>/dev/null); do V destroy "$d" >/dev/null 2>&1; V undefine "$d" --nvram >/dev/null 2>&1; done
    for n in $(V net-list --all --name 2>/dev/null); do V net-destroy "$n" >/dev/null 2>&1; V net-undefine "$n" >/dev/null 2>&1; done
    for v in $(V vol-list "$POOL" 2>/dev/null | awk '{print $1}'); do V vol-delete --pool "$POOL" "$v" >/dev/null 2>&1; done
  fi
  V pool-destroy "$POOL" >/dev/null 2>&1
  V pool-undefine "$POOL" >/dev/null 2>&1
  if [ -f "$WORK/libvirtd.pid" ]; then
    kill "$(cat "$WORK/libvirtd.pid")" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$(cat "$WORK/libvirtd.pid")" 2>/dev/null || break; sleep 0.2; done
  fi
  for p in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  ip netns del "$NS" 2>/dev/null
  if [ $had_conf = 1 ]; then cp -p "$WORK/qemu.conf.orig" "$QEMU_CONF"; else rm -f "$QEMU_CONF"; fi
  if [ "${KEEP:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
  say "total $(( $(date +%s) - T0 ))s"
  exit $rc
}
trap cleanup EXIT

# --- libvirtd inside a private network namespace -------------------------------------------------------
mkdir -p "$WORK/pool" "$WORK/serial" "$WORK/dot"
cat > "$WORK/libvirtd.conf" <<CONF
listen_tls = 0
listen_tcp = 0
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:$WORK/libvirtd.log"
CONF
# VMs as root, without the security driver, cgroups or mount namespaces (no systemd, no SELinux/AppArmor
# here); QEMU's output to files, so no virtlogd is needed.
mkdir -p /etc/libvirt
cat > "$QEMU_CONF" <<CONF
# Written by kubeforge's tests/vagrant/run.sh for its run (the previous file is put back after it).
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
CONF
start_libvirtd() {
  ip netns add "$NS"
  ip -n "$NS" link set lo up
  in_ns libvirtd -d --config "$WORK/libvirtd.conf"
  for _ in $(seq 100); do V version >/dev/null 2>&1 && break; sleep 0.2; done
  V version >/dev/null
  # The only libvirtd (one running before was refused above).
  pgrep -x libvirtd > "$WORK/libvirtd.pid"
  V pool-define-as "$POOL" dir --target "$WORK/pool" >/dev/null
  V pool-start "$POOL" >/dev/null
}
step "libvirtd $(libvirtd --version | awk '{print $NF}') started in network namespace $NS" start_libvirtd

# --- the box ---------------------------------------------------------------------------------------------
export VAGRANT_HOME=$WORK/vagrant.d VAGRANT_CWD=$ROOT/vagrant VAGRANT_DOTFILE_PATH=$WORK/dot
add_box() {
  local box
  box=$("$KF" lab box)
  vagrant box add --name kubeforge/debian "$box" >/dev/null
}
step "box kubeforge/debian from the lab image (kubeforge lab box, vagrant box add)" add_box

# --- vagrant up: machines, then the trigger's inventory init + apply ----------------------------------------
VENV=(KUBEFORGE="$KF" KUBEFORGE_VAGRANT_NODES=$NODES KUBEFORGE_VAGRANT_DRIVER=qemu
      KUBEFORGE_VAGRANT_NETWORK_MODE=open KUBEFORGE_VAGRANT_MEMORY=1024 KUBEFORGE_VAGRANT_CPUS=1
      KUBEFORGE_VAGRANT_POOL=$POOL KUBEFORGE_VAGRANT_SERIAL_DIR=$WORK/serial
      KUBEFORGE_VAGRANT_STATE=$WORK/state KUBEFORGE_VAGRANT_BUNDLE=$BUNDLE
      "KUBEFORGE_VAGRANT_APPLY_ARGS=--ignore-preflight-errors=cpu,memory")
# vagrant's progress bar (carriage returns) is left out of the log.
up() {
  in_ns env "${VENV[@]}" vagrant up --provider=libvirt 2>&1 | tr '\r' '\n' | grep --line-buffered -v 'Progress: ' \
    | tee "$WORK/up.log" | sed 's/^/  | /'
}
step "vagrant up: $NODES machines, then inventory init and apply" up
grep -q "apply: " "$WORK/up.log" || fail "the Vagrantfile's trigger did not run kubeforge apply"

# --- what came out ---------------------------------------------------------------------------------------
INV=$WORK/state/inventory.yaml
in_ns env "${VENV[@]}" vagrant ssh-config > "$WORK/ssh-config.now"
check_inventory() {
  python3 - "$INV" "$WORK/ssh-config.now" "$NODES" <<'PY'
import re, sys
# The inventory as `kubeforge inventory init` writes it (one host per `  - name:` item); read with plain
# text matching, so the test needs no YAML module.
text = open(sys.argv[1]).read()
hosts = []
for item in re.split(r"\n  - name: ", text)[1:]:
    name = item.split()[0]
    addr = re.search(r"\n    address: (\S+)", item).group(1)
    roles = re.search(r"\n    roles: \[([^\]]*)\]", item).group(1).split(", ")
    key = re.search(r"\n      hostKey: (ssh-\S+ \S+)", item)
    assert key, f"{name}: no pinned host key"
    hosts.append((name, addr, roles))
want = {}
host = None
for line in open(sys.argv[2]):
    w = line.split()
    if len(w) == 2 and w[0] == "Host":
        host = w[1]
    elif len(w) == 2 and w[0] == "HostName":
        want[host] = w[1]
got = {n: a for n, a, _ in hosts}
assert len(got) == int(sys.argv[3]), got
assert got == want, f"inventory {got} != vagrant ssh-config {want}"
roles = {n: r for n, _, r in hosts}
# The Vagrantfile's default roles: the first machine is the control plane and etcd member, the others are
# workers; a single machine has every role.
want_first = ["control-plane", "etcd"] + (["worker"] if int(sys.argv[3]) == 1 else [])
assert roles["node1"] == want_first, roles
assert re.search(r"\n  releaseSource:\n    type: bundle\n    path: \S+", text), "no release bundle"
print("  inventory: " + ", ".join(f"{n} {a} {roles[n]}" for n, a in got.items()) + "; host keys pinned")
PY
}
step "the inventory holds the machines of vagrant ssh-config, keys pinned" check_inventory
nodes_ready() {
  local kc=$WORK/state/pki/vagrant/admin.conf out
  for _ in $(seq 60); do
    out=$(in_ns "$KUBECTL" --kubeconfig "$kc" get nodes --no-headers 2>&1) || true
    if [ "$(echo "$out" | awk '$2 == "Ready"' | wc -l)" -eq $NODES ]; then
      echo "$out" | sed 's/^/  /'
      return 0
    fi
    sleep 5
  done
  echo "$out"
  return 1
}
step "kubectl: $NODES Nodes Ready" nodes_ready
# kubeforge keeps the PKI in pki/ beside the inventory: the state directory, where provision.sh writes it.
status_healthy() { (cd "$WORK/state" && in_ns "$KF" status -i inventory.yaml); }
step "kubeforge status: healthy" status_healthy

# --- vagrant destroy leaves nothing -----------------------------------------------------------------------
destroy() { in_ns env "${VENV[@]}" vagrant destroy -f 2>&1 | sed 's/^/  | /'; DESTROYED=1; }
step "vagrant destroy -f" destroy
leftovers() {
  local doms nets vols
  doms=$(V list --all --name | sed '/^$/d')
  nets=$(V net-list --all --name | sed '/^$/d')
  # vagrant-libvirt keeps the box's base volume in the pool by design (it is shared by every machine made
  # from the box; `vagrant box remove` leaves it too): anything else is a leftover.
  vols=$(V vol-list "$POOL" | awk '{print $1}' | grep -v '_vagrant_box_image_' || true)
  [ -z "$doms$nets$vols" ] || { echo "left after destroy: domains [$doms] networks [$nets] volumes [$vols]"; return 1; }
  for v in $(V vol-list "$POOL" | awk '{print $1}'); do V vol-delete --pool "$POOL" "$v" >/dev/null; done
  ls -d "$WORK"/state.destroyed-* >/dev/null && [ ! -e "$WORK/state" ] \
    || { echo "the destroy trigger did not move the cluster state aside"; return 1; }
  [ -z "$(pgrep -f "qemu-system-x86_64.*$WORK" || true)" ] || { echo "a QEMU process is still running"; return 1; }
}
step "no domain, network or machine volume left (the box's base volume removed by the test)" leftovers
stop_libvirtd() {
  V pool-destroy "$POOL" >/dev/null && V pool-undefine "$POOL" >/dev/null
  kill "$(cat "$WORK/libvirtd.pid")"
  for _ in $(seq 50); do kill -0 "$(cat "$WORK/libvirtd.pid")" 2>/dev/null || break; sleep 0.2; done
  rm -f "$WORK/libvirtd.pid"
  local left
  left=$(ip netns pids "$NS")
  [ -z "$left" ] || { echo "processes left in $NS: $(ps -o pid=,comm= -p $left | tr '\n' ' ')"; return 1; }
  ip netns del "$NS"
  local links_after
  links_after=$(ip -br link | awk '{print $1}' | sort | tr '\n' ' ')
  [ "$links_after" = "$links_before" ] || { echo "host interfaces before: $links_before; after: $links_after"; return 1; }
}
step "libvirtd stopped, namespace gone, host interfaces as before" stop_libvirtd
say "ok"
