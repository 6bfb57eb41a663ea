#!/usr/bin/env python3
"""Helpers of benches/ssh/run.sh (standard library only).

  bench.py measure --csv F --tool T --n N --rep R [--cgroup DIR] [--log F] -- CMD...
      Runs CMD as a child subreaper (so daemonised ssh ControlMasters stay in its tree), samples the
      summed RSS of every process of the tool's tree every 50 ms, and appends one CSV row:
      tool,n,rep,rc,verify,wall_s,cpu_s,foreign_s,tree_rss_mb,max_proc_rss_mb
        wall_s           wall clock from spawn to the tool's exit (pidfd, not the sampling tick)
        cpu_s            CPU seconds of the whole test bed (tool, ssh clients, sshd, remote commands):
                         the cpuacct cgroup run.sh put everything in (blank without one)
        foreign_s        busy CPU seconds of the machine that were not the test bed's (other load)
        tree_rss_mb      peak of the summed RSS of the tool's processes (shared pages count once per
                         process, as in `ps`), sampled
        max_proc_rss_mb  largest single process (getrusage of the waited-for tree, exact)
      `verify` is left as "pending"; `bench.py verify` fills it in.
  bench.py verify --csv F --hosts TSV --n N --payload FILE --templates DIR
      Checks hosts 1..N (payload bytes and mode 0755, the 10 rendered files byte for byte against a
      reference rendering, the started marker) and sets the last row's verify column to ok/FAIL.
  bench.py table --csv F [--runs R]
      Prints the Markdown table: medians per tool and N, ratios, targets.
"""
import csv
import ctypes
import hashlib
import os
import re
import resource
import select
import statistics
import sys
import time

COLS = ["tool", "n", "rep", "rc", "verify", "wall_s", "cpu_s", "foreign_s", "tree_rss_mb", "max_proc_rss_mb"]
PAGE = os.sysconf("SC_PAGE_SIZE")
HZ = os.sysconf("SC_CLK_TCK")


def opts(argv):
    o, i = {}, 0
    while i < len(argv):
        if argv[i] == "--":
            o["cmd"] = argv[i + 1:]
            break
        o[argv[i].lstrip("-")] = argv[i + 1]
        i += 2
    return o


def tree_rss(root):
    """Summed RSS (bytes) of every descendant of `root` (not root itself)."""
    total, todo, seen = 0, [root], set()
    while todo:
        pid = todo.pop()
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    for c in f.read().split():
                        if c not in seen:
                            seen.add(c)
                            todo.append(c)
        except OSError:
            pass
    for pid in seen:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


def busy_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # user nice system irq softirq steal


def cg_ns(cg):
    if not cg:
        return None
    try:
        with open(os.path.join(cg, "cpuacct.usage")) as f:
            return int(f.read())
    except OSError:
        return None


def append_row(path, row):
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(COLS)
        w.writerow([row.get(c, "") for c in COLS])


def measure(o):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans (ControlPersist masters) stay ours
    log = open(o.get("log", os.devnull), "wb")
    c0, b0, t0 = cg_ns(o.get("cgroup")), busy_ticks(), time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            os.execvp(o["cmd"][0], o["cmd"])
        finally:
            os._exit(127)
    pidfd = os.pidfd_open(pid)
    peak = 0
    while True:
        peak = max(peak, tree_rss(os.getpid()))
        if select.select([pidfd], [], [], 0.05)[0]:
            break
    _, status, _ = os.wait4(pid, 0)
    t1, b1, c1 = time.monotonic(), busy_ticks(), cg_ns(o.get("cgroup"))
    while True:  # reap orphans that already exited; live ones are closed by run.sh
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
    rc = os.waitstatus_to_exitcode(status)
    cpu = (c1 - c0) / 1e9 if c0 is not None and c1 is not None else None
    busy = (b1 - b0) / HZ
    row = dict(tool=o["tool"], n=o["n"], rep=o["rep"], rc=rc, verify="pending", wall_s=f"{t1 - t0:.3f}",
               cpu_s="" if cpu is None else f"{cpu:.2f}",
               foreign_s="" if cpu is None else f"{max(0.0, busy - cpu):.2f}",
               tree_rss_mb=f"{peak / 1048576:.1f}",
               max_proc_rss_mb=f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.1f}")
    append_row(o["csv"], row)
    print(f"  {o['tool']:<9} N={o['n']:<3} run {o['rep']}: rc={rc} wall {row['wall_s']} s, cpu {row['cpu_s']} s, "
          f"foreign {row['foreign_s']} s, RSS tree {row['tree_rss_mb']} MB / max proc {row['max_proc_rss_mb']} MB")
    return rc


def render(text, values):
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: values[m.group(1)], text)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify(o):
    n = int(o["n"])
    want = sha256_file(o["payload"])
    tdir = o["templates"]
    templates = sorted(t for t in os.listdir(tdir) if t.endswith(".conf.j2"))
    bad = []
    with open(o["hosts"]) as f:
        hosts = [l.rstrip("\n").split("\t") for l in f if l.strip() and not l.startswith("#")][:n]
    for name, addr, _port, root, index in hosts:
        values = dict(node_name=name, node_ip=addr, node_index=index, root=root, cluster_name="bench")
        p = os.path.join(root, "usr/local/bin/payload.bin")
        try:
            if sha256_file(p) != want:
                bad.append(f"{name}: payload differs")
            if os.stat(p).st_mode & 0o7777 != 0o755:
                bad.append(f"{name}: payload mode {os.stat(p).st_mode & 0o7777:o}")
            for t in templates:
                with open(os.path.join(tdir, t)) as tf:
                    exp = render(tf.read(), values).encode()
                dest = os.path.join(root, "etc/kube", t[:-3])
                with open(dest, "rb") as df:
                    if df.read() != exp:
                        bad.append(f"{name}: {dest} differs from the reference rendering")
                if os.stat(dest).st_mode & 0o777 != 0o644:
                    bad.append(f"{name}: {dest} mode")
            if not os.path.exists(os.path.join(root, "var/lib/kube/started")):
                bad.append(f"{name}: no started marker")
        except OSError as e:
            bad.append(f"{name}: {e}")
    for b in bad[:10]:
        print(f"  verify: {b}", file=sys.stderr)
    with open(o["csv"]) as f:
        rows = list(csv.DictReader(f))
    rows[-1]["verify"] = "ok" if not bad else "FAIL"
    with open(o["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, COLS)
        w.writeheader()
        w.writerows(rows)
    return 1 if bad else 0


def table(o):
    with open(o["csv"]) as f:
        rows = list(csv.DictReader(f))
    tools = []
    for r in rows:
        if r["tool"] not in tools:
            tools.append(r["tool"])
    ns = sorted({int(r["n"]) for r in rows})
    good = lambda t, n: [r for r in rows if r["tool"] == t and int(r["n"]) == n and r["rc"] == "0" and r["verify"] == "ok"]
    med = lambda rs, c: statistics.median(float(r[c]) for r in rs if r[c] != "")
    wall = {}
    print("| N | tool | runs ok | wall s, median (min–max) | test-bed CPU s | foreign CPU s | peak RSS, tool's process tree MB | largest process RSS MB |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for n in ns:
        for t in tools:
            all_ = [r for r in rows if r["tool"] == t and int(r["n"]) == n]
            if not all_:
                continue
            ok = good(t, n)
            if not ok:
                print(f"| {n} | {t} | 0/{len(all_)} | failed | | | | |")
                continue
            ws = [float(r["wall_s"]) for r in ok]
            wall[(t, n)] = statistics.median(ws)
            cpu = f"{med(ok, 'cpu_s'):.1f}" if ok[0]["cpu_s"] else "n/a"
            fo = f"{med(ok, 'foreign_s'):.1f}" if ok[0]["foreign_s"] else "n/a"
            print(f"| {n} | {t} | {len(ok)}/{len(all_)} | {wall[(t, n)]:.2f} ({min(ws):.2f}–{max(ws):.2f}) | {cpu} | {fo} "
                  f"| {med(ok, 'tree_rss_mb'):.0f} | {med(ok, 'max_proc_rss_mb'):.0f} |")
    print()
    print("| N | ansible / kubeforge (wall) | kubeforge / openssh (wall) | target at N=50 |")
    print("|---:|---:|---:|---|")
    for n in ns:
        k, a, s = wall.get(("kubeforge", n)), wall.get(("ansible", n)), wall.get(("openssh", n))
        ra = f"{a / k:.2f}x" if k and a else "n/a"
        rs = f"{k / s:.2f}x" if k and s else "n/a"
        tgt = ""
        if n == 50:
            va = "met" if k and a and a / k >= 5 else "MISSED"
            vs = "met" if k and s and k / s <= 1.3 else "MISSED"
            tgt = f"ansible/kubeforge >= 5x: {va}; kubeforge/openssh <= 1.3x: {vs}"
        print(f"| {n} | {ra} | {rs} | {tgt} |")
    if 50 not in ns:
        print("\n(targets apply at N=50: ansible/kubeforge >= 5x, kubeforge/openssh <= 1.3x; not measured in this run)")


if __name__ == "__main__":
    cmd, o = sys.argv[1], opts(sys.argv[2:])
    sys.exit({"measure": measure, "verify": verify, "table": table}[cmd](o))
