#!/usr/bin/env bash
# Benchmark (not a test): `kubeforge apply` onto a 3-VM lab (one control plane + two workers) from a cold
# cluster with the artifacts already cached, then a no-op re-apply. Prints, per phase, the wall time and
# the two figures kubeforge controls whatever the machine: SSH round trips per host and bytes sent; then
# the same two per host, and whether the targets hold:
#   - a no-op re-apply sends no file bytes and needs at most one round trip per host per phase;
#   - a cold apply sends each file (binaries included) once per host that needs it: bytes sent stay within
#     a few percent of the bytes of the files written.
# Under emulated lab VMs the wall time is the guests'; the round trips and bytes are not.
#
#   bash benches/apply.sh            # as root; KEEP_LAB=1 keeps the lab, NODES=3 by default
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "benches/apply.sh needs root (network namespaces, VMs)" >&2; exit 1; }

LAB=${LAB:-bench$$}
NODES=${NODES:-3}
BUNDLE_DIR=${BUNDLE_DIR:-$HOME/.cache/kubeforge/test-bundle}
OUT=$(mktemp -d -t kf-apply-bench.XXXXXX)

bash tests/lab/install-host-deps.sh >/dev/null
cargo build --release -p kubeforge -p kubeforge-apilb -q
[ -f "$BUNDLE_DIR/manifest.json" ] || bash tests/bundle/build.sh "$BUNDLE_DIR" >/dev/null
KF=$PWD/target/release/kubeforge

cleanup() { [ "${KEEP_LAB:-0}" = 1 ] || "$KF" lab down --name "$LAB" >/dev/null 2>&1 || true; }
trap cleanup EXIT

"$KF" lab up --name "$LAB" --nodes "$NODES" --bundle "$BUNDLE_DIR" --timings >"$OUT/lab-up.txt" 2>&1 \
  || { cat "$OUT/lab-up.txt"; exit 1; }
INV=lab/$LAB/inventory.yaml
run_apply() {
  local t0 t1
  t0=$(date +%s.%N)
  "$KF" lab exec --name "$LAB" -- "$KF" apply -i "$INV" --ignore-preflight-errors=cpu,memory >"$OUT/$1.txt" 2>&1 \
    || { cat "$OUT/$1.txt"; exit 1; }
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f\n", b-a}' >"$OUT/$1.wall"
}
run_apply cold
run_apply noop

python3 - "$OUT" <<'EOF'
import re, sys
out = sys.argv[1]

def parse(name):
    text = open(f"{out}/{name}.txt").read()
    traffic, times, hosts = {}, {}, {}
    for line in text.splitlines():
        m = re.match(r"^(\S+)\s+(\d+)\s+(\d+)(?:-(\d+))?\s+(\d+)\s+(\d+)$", line)
        if m:
            traffic[m[1]] = dict(hosts=int(m[2]), rt=int(m[4] or m[3]), sent=int(m[5]), files=int(m[6]))
        m = re.match(r"^(\S+)\s+([\d.]+(?:ms|s)|\d+m\d+s)\s+(\d+)\s+(\d+)\s", line)
        if m:
            times[m[1]] = m[2]
        m = re.match(r"^\[stats\] (\S+): (\d+) round trips, (\d+) bytes sent", line)
        if m:
            hosts[m[1]] = (int(m[2]), int(m[3]))
    wall = open(f"{out}/{name}.wall").read().strip()
    return traffic, times, hosts, wall, text

cold, noop = parse("cold"), parse("noop")
print(next((l for l in open(f"{out}/lab-up.txt") if l.startswith("timings:")), "lab up: no timings line").strip())
print()
print(f"{'phase':<15} {'cold time':>10} {'rt/host':>8} {'bytes sent':>12} {'file bytes':>12}   {'no-op time':>10} {'rt/host':>8} {'bytes sent':>11}")
for phase, c in cold[0].items():
    n = noop[0].get(phase, dict(rt=0, sent=0, files=0))
    print(f"{phase:<15} {cold[1].get(phase, '-'):>10} {c['rt']:>8} {c['sent']:>12} {c['files']:>12}   "
          f"{noop[1].get(phase, '-'):>10} {n['rt']:>8} {n['sent']:>11}")
print(f"{'wall (whole run)':<15} {cold[3] + ' s':>10} {'':>8} {'':>12} {'':>12}   {noop[3] + ' s':>10}")
print()
print(f"{'host':<10} {'cold round trips':>17} {'cold bytes sent':>16} {'no-op round trips':>18} {'no-op bytes sent':>17}")
for h, (rt, sent) in sorted(cold[2].items()):
    nrt, nsent = noop[2].get(h, (0, 0))
    print(f"{h:<10} {rt:>17} {sent:>16} {nrt:>18} {nsent:>17}")
print()
def total(traffic):
    return {k: sum(v[k] for v in traffic.values()) for k in ("sent", "files")}
c_total = total(cold[0])
ok1 = all(v["rt"] <= 1 for v in noop[0].values()) and total(noop[0])["files"] == 0 and len(noop[0]) > 0
ok2 = c_total["sent"] <= c_total["files"] * 1.05 + 64 * 1024
print(f"target: no-op re-apply sends no file bytes, <= 1 round trip per host per phase: {'met' if ok1 else 'MISSED'}")
print(f"target: cold apply sends each file once per host (bytes sent {c_total['sent']} vs file bytes "
      f"{c_total['files']}, overhead {c_total['sent'] - c_total['files']} B): {'met' if ok2 else 'MISSED'}")
print(f"no-op re-apply reported: {'0 changes' if 'apply: 0 changes' in noop[4] else 'CHANGES (not converged)'}")
EOF
echo "(raw outputs: $OUT)"
