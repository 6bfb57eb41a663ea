#!/usr/bin/env bash
# Benchmark (not a test): `kubeforge maintain --reboot always` on a 3-VM lab (one control plane + two workers,
# installed with a Deployment of 3 replicas and a PodDisruptionBudget of minAvailable 2 running). Prints per
# host the drain, the way back from the reboot (SSH with a new boot id, services healthy), the gate and the
# total, from maintain's own report, with the SSH round trips and connections per host, and the wall time.
# Under emulated lab VMs a reboot is the guests' boot time (about 80 s each); with KVM it is a few seconds.
#
#   bash benches/maintain.sh          # as root; KEEP_LAB=1 keeps the lab; CPUS=N vCPUs per VM (default: lab up's)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "benches/maintain.sh needs root (network namespaces, VMs)" >&2; exit 1; }

LAB=${LAB:-bmt$$}
VERSION=${VERSION:-v1.37.1}
OUT=$(mktemp -d -t kf-maintain-bench.XXXXXX)

. benches/lab-bench.sh

"$KF" lab up --name "$LAB" --nodes 3 ${CPUS:+--cpus "$CPUS"} --bundle "$BUNDLE_DIR" --kubernetes-version "$VERSION" >"$OUT/lab-up.txt" 2>&1 \
  || { cat "$OUT/lab-up.txt"; exit 1; }
INV=lab/$LAB/inventory.yaml
"$KF" lab exec --name "$LAB" -- "$KF" apply -i "$INV" --ignore-preflight-errors=cpu,memory >"$OUT/apply.txt" 2>&1 \
  || { cat "$OUT/apply.txt"; exit 1; }
KUBECTL=$(find "$BUNDLE_DIR/kubectl" -type f -name kubectl | sort | tail -1)
ADMIN=lab/$LAB/pki/$LAB/admin.conf
cat >"$OUT/web.yaml" <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: web:1}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web, namespace: default}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: web}}
YAML
"$KF" lab exec --name "$LAB" -- "$KUBECTL" --kubeconfig "$ADMIN" apply -f "$OUT/web.yaml" >/dev/null
"$KF" lab exec --name "$LAB" -- "$KUBECTL" --kubeconfig "$ADMIN" rollout status deployment/web --timeout=180s >/dev/null
t0=$(date +%s.%N)
"$KF" lab exec --name "$LAB" -- "$KF" maintain -i "$INV" --reboot always --yes >"$OUT/maintain.txt" 2>&1 \
  || { cat "$OUT/maintain.txt"; exit 1; }
t1=$(date +%s.%N)

python3 - "$OUT" "$t0" "$t1" <<'PY'
import re, sys
out, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
text = open(f"{out}/maintain.txt").read()
rows, stats = {}, {}
for line in text.splitlines():
    m = re.match(r"^(\S+)\s+(\d+)\s+(yes|no)\s+(\d+)s\s+(\d+)s\s+(\d+)s\s+(\d+)s\s+(\d+)s$", line)
    if m:
        rows[m[1]] = m.groups()[1:]
    m = re.match(r"^\[stats\] (\S+): (\d+) round trips, \d+ bytes sent, (\d+) connection", line)
    if m:
        stats[m[1]] = (int(m[2]), int(m[3]))
print(f"{'host':<8} {'rebooted':>8} {'drain (s)':>9} {'back (s)':>9} {'gate (s)':>9} {'total (s)':>10} {'round trips':>12} {'connections':>12}")
for h in sorted(rows):
    _, reb, drain, _, back, gate, total = rows[h]
    rt, conn = stats.get(h, (0, 0))
    print(f"{h:<8} {reb:>8} {drain:>9} {back:>9} {gate:>9} {total:>10} {rt:>12} {conn:>12}")
print(f"wall (whole maintenance, reads and plan included): {t1 - t0:.0f} s")
apply_total = [l.split()[1] for l in open(f"{out}/apply.txt").read().splitlines() if l.startswith("total ") and len(l.split()) == 2]
print(f"first apply of the lab (before the maintenance): {apply_total[-1] if apply_total else '?'}")
print(f"maintain reported: {'done' if 'maintained' in text else 'NOT DONE'}")
PY
echo "(raw outputs: $OUT)"
