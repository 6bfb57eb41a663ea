#!/usr/bin/env bash
# Benchmark (not a test): `kubeforge upgrade apply` from v1.35.8 to v1.36.4 on a 3-VM lab (one control plane
# + two workers, installed at v1.35.8 with the artifacts cached). Prints per host the step's wall time
# (drain, converge, gate) and of each phase in it, SSH round trips and bytes sent, against the bytes of the files the plan said the
# host needs, and whether the target holds:
#   - bytes sent = the new binaries (and configs) once per host that needs them: within a few percent of the
#     planned file bytes, plus the small state copies the control plane receives after each step.
# Under emulated lab VMs the wall time is the guests'; the round trips and bytes are not.
#
#   bash benches/upgrade.sh          # as root; KEEP_LAB=1 keeps the lab
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "benches/upgrade.sh needs root (network namespaces, VMs)" >&2; exit 1; }

LAB=${LAB:-bup$$}
FROM=${FROM:-v1.35.8}
TO=${TO:-v1.36.4}
OUT=$(mktemp -d -t kf-upgrade-bench.XXXXXX)

. benches/lab-bench.sh

"$KF" lab up --name "$LAB" --nodes 3 --bundle "$BUNDLE_DIR" --kubernetes-version "$FROM" >"$OUT/lab-up.txt" 2>&1 \
  || { cat "$OUT/lab-up.txt"; exit 1; }
INV=lab/$LAB/inventory.yaml
"$KF" lab exec --name "$LAB" -- "$KF" apply -i "$INV" --ignore-preflight-errors=cpu,memory >"$OUT/apply.txt" 2>&1 \
  || { cat "$OUT/apply.txt"; exit 1; }
t0=$(date +%s.%N)
"$KF" lab exec --name "$LAB" -- "$KF" upgrade apply -i "$INV" --to "$TO" --yes --ignore-preflight-errors=cpu,memory \
  >"$OUT/upgrade.txt" 2>&1 || { cat "$OUT/upgrade.txt"; exit 1; }
t1=$(date +%s.%N)

python3 - "$OUT" "$t0" "$t1" <<'EOF'
import re, sys
out, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
text = open(f"{out}/upgrade.txt").read()
planned, step_time, stats, phases = {}, {}, {}, {}
current = None
for line in text.splitlines():
    m = re.match(r"^\[upgrade\] (\S+): \d+ change\(s\)", line)
    if m:
        current = m[1]
    m = re.match(r"^\[([a-z-]+)\] finished in (\S+) ", line)
    if m and current:
        phases.setdefault(current, []).append(f"{m[1]} {m[2]}")
    m = re.match(r"^\[upgrade\] (\S+): (cordoned|drained|on \S+, gate passed)", line)
    if m and m[1] == current and m[2].startswith("on "):
        current = None
    m = re.match(r"^\[upgrade\] (\S+): (\d+) change\(s\), (\d+) bytes to send", line)
    if m:
        planned[m[1]] = (int(m[2]), int(m[3]))
    m = re.match(r"^\[upgrade\] (\S+): on \S+, gate passed \((\d+)s\)", line)
    if m:
        step_time[m[1]] = int(m[2])
    m = re.match(r"^\[stats\] (\S+): (\d+) round trips, (\d+) bytes sent", line)
    if m:
        stats[m[1]] = (int(m[2]), int(m[3]))
print(f"{'host':<8} {'changes':>8} {'planned bytes':>14} {'bytes sent':>12} {'round trips':>12} {'step (s)':>9}")
ok = True
for h in sorted(stats):
    n, pb = planned.get(h, (0, 0))
    rt, sent = stats[h]
    print(f"{h:<8} {n:>8} {pb:>14} {sent:>12} {rt:>12} {step_time.get(h, '-'):>9}")
    # The first control plane also receives the state copy after every step (a few KiB each).
    ok &= sent <= pb * 1.05 + 64 * 1024
for h in sorted(phases):
    print(f"{h}: " + ", ".join(phases[h]))
print(f"wall (whole upgrade, snapshot and gates included): {t1 - t0:.0f} s")
print(f"target: each host receives its new files once (bytes sent within 5% + 64 KiB of the planned bytes): {'met' if ok else 'MISSED'}")
print(f"upgrade reported: {'done' if 'now runs' in text else 'NOT DONE'}")
EOF
echo "(raw outputs: $OUT)"
