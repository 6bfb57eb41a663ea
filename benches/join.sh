#!/usr/bin/env bash
# Benchmark (not a test): the cost of `kubeforge join` adding one worker, on a 2-node and on a 3-node
# cluster (a 4-VM lab: node1 control plane + node2 installed with apply, then node3 joins, then node4).
# Prints per host the SSH round trips and bytes sent of each join, its wall time, and whether the targets
# hold:
#   - flat: the joining worker and the control plane cost the same whatever the cluster's size (round trips
#     equal; bytes within 5% for the joining node, and for the control plane only the node list's entry for
#     one more node, under 1 KiB);
#   - the hosts not joining get nothing but what the new node changes for them: with the built-in bridge
#     CNI, each existing node's route to the new node's pod subnet (a few round trips, under 4 KiB); with
#     CNI=none, no session at all (0 round trips).
# Under emulated lab VMs the wall time is the guests'; the round trips and bytes are not.
#
#   bash benches/join.sh             # as root; KEEP_LAB=1 keeps the lab, CNI=none for no pod network
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "benches/join.sh needs root (network namespaces, VMs)" >&2; exit 1; }

LAB=${LAB:-bjoin$$}
CNI=${CNI:-bridge}
OUT=$(mktemp -d -t kf-join-bench.XXXXXX)

. benches/lab-bench.sh

"$KF" lab up --name "$LAB" --nodes 4 --bundle "$BUNDLE_DIR" --timings >"$OUT/lab-up.txt" 2>&1 \
  || { cat "$OUT/lab-up.txt"; exit 1; }
# Inventories with the first 2, 3 and 4 hosts of the lab's own.
python3 - "lab/$LAB/inventory.yaml" "$OUT" "$CNI" <<'EOF'
import sys, yaml
inv = yaml.safe_load(open(sys.argv[1]))
inv["cluster"]["cni"] = {"plugin": sys.argv[3]}
hosts = inv["hosts"]
for n in (2, 3, 4):
    inv["hosts"] = hosts[:n]
    yaml.safe_dump(inv, open(f"{sys.argv[2]}/inv{n}.yaml", "w"), sort_keys=False)
EOF
run() {
  local what=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  "$KF" lab exec --name "$LAB" -- "$KF" "$@" --ignore-preflight-errors=cpu,memory >"$OUT/$what.txt" 2>&1 \
    || { cat "$OUT/$what.txt"; exit 1; }
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f\n", b-a}' >"$OUT/$what.wall"
}
run apply apply -i "$OUT/inv2.yaml"
run join3 join -i "$OUT/inv3.yaml"
run join4 join -i "$OUT/inv4.yaml"

python3 - "$OUT" "$CNI" <<'EOF'
import re, sys
out, cni = sys.argv[1], sys.argv[2]

def stats(name):
    hosts = {}
    for line in open(f"{out}/{name}.txt"):
        m = re.match(r"^\[stats\] (\S+): (\d+) round trips, (\d+) bytes sent", line)
        if m:
            hosts[m[1]] = (int(m[2]), int(m[3]))
    return hosts, open(f"{out}/{name}.wall").read().strip()

runs = {"2-node cluster, node3 joins": stats("join3"), "3-node cluster, node4 joins": stats("join4")}
print(f"{'join':<28} {'host':<7} {'role':<14} {'round trips':>11} {'bytes sent':>12}")
for what, (hosts, wall) in runs.items():
    joiner = "node3" if "node3" in what else "node4"
    for h in sorted(hosts):
        role = "joining" if h == joiner else ("control plane" if h == "node1" else "existing")
        print(f"{what:<28} {h:<7} {role:<14} {hosts[h][0]:>11} {hosts[h][1]:>12}")
    print(f"{what:<28} wall {wall} s")
(a, _), (b, _) = runs.values()
# The control plane's bytes hold the cluster's node list (the node metadata file and the label command name
# every node): they may grow by that list's entry for one more node (under 1 KiB), nothing more.
cp_growth = b["node1"][1] - a["node1"][1]
flat = a["node3"][0] == b["node4"][0] and abs(a["node3"][1] - b["node4"][1]) <= 0.05 * max(a["node3"][1], 1) \
    and a["node1"][0] == b["node1"][0] and cp_growth < 1024
others = [a["node2"], b["node2"], b["node3"]]
if cni == "none":
    quiet = all(rt == 0 for rt, _ in others)
    rule = "0 round trips"
else:
    quiet = all(rt <= 8 and sent < 4096 for rt, sent in others)
    rule = "only the route to the new node (<= 8 round trips, < 4 KiB)"
print(f"target: flat (joining node: same round trips, bytes within 5%; control plane: same round trips, "
      f"bytes + {cp_growth} with one more node, < 1 KiB): {'met' if flat else 'MISSED'}")
print(f"target: hosts not joining get {rule}: {'met' if quiet else 'MISSED'}")
EOF
echo "(raw outputs: $OUT)"
