//! The lab itself, checked on the VMs the end-to-end test boots (one lab serves every VM test: emulated
//! VMs are slow to boot). `kubeforge lab up` must give machines the installer can use (SSH as root and as
//! the sudo user `lab` with the key and host key the inventory names, systemd running, the kernel modules
//! Kubernetes needs, node-to-node traffic on the lab network, `lab status`), and `lab down` must leave
//! nothing behind (no qemu process, no network namespace, no tap device, no overlay). The numbers
//! `--timings` prints (image built/cached, time to ready, qemu RSS per VM) and the duration of `lab down`
//! are checked and echoed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Runs `kubeforge ARGS` in the lab's working directory.
pub type Kf<'a> = &'a dyn Fn(&[&str]) -> Output;

/// What `lab up --timings` printed.
pub struct UpNumbers {
    image_state: &'static str,
    image_s: f64,
    ready_s: f64,
    rss: Vec<f64>,
    wall_s: f64,
}

/// What the lab holds on this machine while it is up, to check that `lab down` removed it.
pub struct Footprint {
    name: String,
    netns: String,
    lab_dir: PathBuf,
    pids: Vec<i64>,
    overlays: Vec<PathBuf>,
    taps: Vec<(String, String)>,
    up: UpNumbers,
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn must(o: Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed ({}):\n{}", o.status, text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn host(argv: &[&str]) -> Output {
    Command::new(argv[0]).args(&argv[1..]).output().unwrap_or_else(|e| panic!("run {argv:?}: {e}"))
}

/// Alive and not a zombie (a reaped-late qemu still answers kill(0)).
fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()).map(str::to_owned))
        .is_some_and(|st| st != "Z" && st != "X")
}

/// The first number after `prefix` in `s`.
fn number_after(s: &str, prefix: &str) -> Option<f64> {
    let rest = &s[s.find(prefix)? + prefix.len()..];
    let num: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    num.parse().ok()
}

/// MAC addresses of the tap devices in `netns` (or the host namespace when `None`), by device name.
fn taps(netns: Option<&str>) -> Vec<(String, String)> {
    let mut argv = vec!["ip"];
    if let Some(ns) = netns {
        argv.extend(["-n", ns]);
    }
    argv.extend(["-o", "link", "show"]);
    let out = host(&argv);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let name = l.split(": ").nth(1)?.split('@').next()?.to_owned();
            let mac = l.split("link/ether ").nth(1)?.split_whitespace().next()?.to_owned();
            Some((name, mac))
        })
        .filter(|(n, _)| n.starts_with("tap"))
        .collect()
}

/// Checks `lab up`'s output for `nodes` VMs (prerequisites first: fail, never skip).
pub fn up_numbers(up_out: &str, nodes: usize, wall: Duration) -> UpNumbers {
    let timings =
        up_out.lines().find(|l| l.starts_with("timings: image ")).expect("--timings prints a timings line");
    let image_state = if timings.contains("image built ") { "built" } else { "cached" };
    assert!(timings.contains("image built ") || timings.contains("image cached "), "{timings}");
    let image_s = number_after(timings, &format!("image {image_state} ")).expect("image time");
    let ready_s = number_after(timings, "VMs ready (SSH) ").expect("time to ready");
    assert!(ready_s >= image_s, "{timings}");
    let mut rss = Vec::new();
    for i in 1..=nodes {
        let line = up_out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("node{i} qemu RSS ")))
            .unwrap_or_else(|| panic!("--timings prints the memory of node{i}"));
        let mib = number_after(line, "qemu RSS ").expect("RSS number");
        assert!(mib > 0.0, "node{i}'s qemu RSS must be read from its PID: {line}");
        rss.push(mib);
    }
    UpNumbers { image_state, image_s, ready_s, rss, wall_s: wall.as_secs_f64() }
}

/// The host tools the lab needs, on PATH.
pub fn host_tools_present() {
    assert!(nix::unistd::Uid::effective().is_root(), "the lab needs root (network namespaces, taps)");
    for tool in ["qemu-system-x86_64", "qemu-img", "mmdebstrap", "mke2fs", "ip", "ssh", "ssh-keygen", "pgrep"]
    {
        let found =
            std::env::var("PATH").unwrap_or_default().split(':').any(|d| Path::new(d).join(tool).is_file());
        assert!(found, "missing host tool {tool}: run tests/lab/install-host-deps.sh as root");
    }
}

/// `ssh` from inside the lab network with explicit credentials, retried on ssh's own failures (exit 255:
/// under TCG and host load a banner exchange can time out).
fn ssh_as(kf: Kf, name: &str, user: &str, ip: &str, key: &str, known_hosts: &Path, cmd: &str) -> Output {
    let kh = format!("UserKnownHostsFile={}", known_hosts.display());
    let target = format!("{user}@{ip}");
    let mut last = None;
    for attempt in 1..=3 {
        let o = kf(&[
            "lab",
            "exec",
            "--name",
            name,
            "--",
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            &kh,
            "-o",
            "ConnectTimeout=60",
            "-o",
            "LogLevel=ERROR",
            "-i",
            key,
            &target,
            cmd,
        ]);
        if o.status.code() != Some(255) {
            return o;
        }
        eprintln!("[lab] ssh {target} attempt {attempt} failed: {}", text(&o));
        last = Some(o);
        std::thread::sleep(Duration::from_secs(5));
    }
    last.unwrap()
}

/// Checks the freshly booted lab `name` (working directory `dir`, `nodes` VMs): what `lab up` recorded,
/// every node as root and as `lab`, node1 reaching node2, `lab status`. Returns what to check after down.
pub fn nodes_are_usable(kf: Kf, dir: &Path, name: &str, count: usize, up: UpNumbers) -> Footprint {
    let netns = format!("kf-{name}");
    let lab_dir = dir.join("lab").join(name);
    // What up recorded: the inventory (what `kubeforge apply` uses) and the lab state.
    let inv_path = lab_dir.join("inventory.yaml");
    let inv: serde_yaml::Value = serde_yaml::from_slice(&std::fs::read(&inv_path).unwrap()).unwrap();
    let key = inv["ssh"]["identityFile"].as_str().expect("inventory ssh.identityFile").to_owned();
    assert!(Path::new(&key).is_file(), "the inventory's key {key} exists");
    assert_eq!(inv["ssh"]["user"].as_str(), Some("root"));
    let hosts = inv["hosts"].as_sequence().expect("inventory hosts");
    assert_eq!(hosts.len(), count);
    let nodes: Vec<(String, String)> = hosts
        .iter()
        .map(|h| (h["name"].as_str().unwrap().to_owned(), h["address"].as_str().unwrap().to_owned()))
        .collect();
    // known_hosts from the inventory's pinned host keys: a wrong key fails StrictHostKeyChecking.
    let known_hosts = dir.join("known_hosts");
    let kh: String = hosts
        .iter()
        .map(|h| {
            format!("{} {}\n", h["address"].as_str().unwrap(), h["ssh"]["hostKey"].as_str().expect("hostKey"))
        })
        .collect();
    std::fs::write(&known_hosts, kh).unwrap();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab_dir.join("lab.json")).unwrap()).unwrap();
    assert_eq!(state["netns"], netns.as_str());
    let pids: Vec<i64> = state["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let p = v["pidfile"].as_str().unwrap();
            std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p}: {e}")).trim().parse().unwrap()
        })
        .collect();
    let overlays: Vec<PathBuf> = state["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| PathBuf::from(v["overlay"].as_str().unwrap()))
        .collect();
    assert!(pids.iter().all(|p| alive(*p)), "every recorded qemu PID is running: {pids:?}");
    assert!(overlays.iter().all(|o| o.is_file()), "every overlay exists: {overlays:?}");

    // Every node: root and the sudo user `lab`, systemd, kernel modules.
    let t_checks = Instant::now();
    for (node, ip) in &nodes {
        let root = must(
            ssh_as(
                kf,
                name,
                "root",
                ip,
                &key,
                &known_hosts,
                "id -u; hostname; \
                 s=$(timeout 300 systemctl is-system-running --wait); echo \"system: $s\"; \
                 [ \"$s\" = running ] || systemctl --failed --no-legend; \
                 modprobe overlay && modprobe br_netfilter && echo modules-ok; \
                 grep -E '^(overlay|br_netfilter) ' /proc/modules | cut -d' ' -f1 | sort | tr '\\n' ' '",
            ),
            &format!("ssh root@{node}"),
        );
        eprintln!("[lab] {node} as root:\n{root}");
        let lines: Vec<&str> = root.lines().collect();
        assert_eq!(lines.first().copied(), Some("0"), "{node}: root is uid 0");
        assert_eq!(
            lines.get(1).copied(),
            Some(node.as_str()),
            "{node}: hostname from the kernel command line"
        );
        let system = root.lines().find_map(|l| l.strip_prefix("system: ")).unwrap_or("");
        assert!(
            system == "running" || system == "degraded",
            "{node}: systemctl is-system-running: {system:?}"
        );
        assert!(root.contains("modules-ok"), "{node}: modprobe overlay br_netfilter:\n{root}");
        assert!(root.contains("br_netfilter overlay"), "{node}: both modules loaded:\n{root}");

        let user = must(
            ssh_as(
                kf,
                name,
                "lab",
                ip,
                &key,
                &known_hosts,
                "id -un; id -u; sudo -n true && echo sudo-ok; sudo -n id -u",
            ),
            &format!("ssh lab@{node}"),
        );
        eprintln!("[lab] {node} as lab:\n{user}");
        let lines: Vec<&str> = user.lines().collect();
        assert_eq!(lines.first().copied(), Some("lab"), "{node}: the login user");
        assert_ne!(lines.get(1).copied(), Some("0"), "{node}: `lab` is not root");
        assert_eq!(lines.get(2).copied(), Some("sudo-ok"), "{node}: sudo -n true as lab");
        assert_eq!(lines.get(3).copied(), Some("0"), "{node}: sudo -n gives root");
    }

    // node1 reaches node2 over the lab network (through `lab ssh`, the subcommand, as root).
    let (n1, _) = &nodes[0];
    let (_, ip2) = &nodes[1];
    let reach = kf(&[
        "lab",
        "ssh",
        "--name",
        name,
        n1,
        "--",
        &format!("ping -c 2 -W 5 {ip2} >/dev/null && echo ping-ok; timeout 20 bash -c '</dev/tcp/{ip2}/22' && echo tcp22-ok"),
    ]);
    let reach_out = must(reach, "node1 -> node2");
    assert!(reach_out.contains("ping-ok"), "{n1} pings {ip2}:\n{reach_out}");
    assert!(reach_out.contains("tcp22-ok"), "{n1} connects to {ip2}:22:\n{reach_out}");
    eprintln!("[lab] node checks took {:.0}s", t_checks.elapsed().as_secs_f64());

    // Status: both VMs running, with their addresses.
    let status = must(kf(&["lab", "status", "--name", name]), "lab status");
    eprintln!("[lab] lab status:\n{status}");
    assert!(status.contains(&netns), "{status}");
    for ((node, ip), pid) in nodes.iter().zip(&pids) {
        let line = status
            .lines()
            .find(|l| l.split_whitespace().next() == Some(node.as_str()))
            .unwrap_or_else(|| panic!("status lists {node}:\n{status}"));
        assert!(line.contains(ip.as_str()), "{line}");
        assert!(line.contains(&format!("running (pid {pid}")), "{line}");
    }

    let taps_before = taps(Some(&netns));
    assert_eq!(taps_before.len(), count, "one tap per VM in {netns}: {taps_before:?}");
    Footprint { name: name.to_owned(), netns, lab_dir, pids, overlays, taps: taps_before, up }
}

/// After a successful `lab down` (its output `down_out`): nothing of the lab is left. Prints the numbers.
pub fn nothing_left_behind(f: &Footprint, down_out: &str) {
    let (name, netns, pids, overlays, lab_dir) = (&f.name, &f.netns, &f.pids, &f.overlays, &f.lab_dir);
    let down_s = number_after(down_out, "is down (").expect("lab down prints its duration");
    let deadline = Instant::now() + Duration::from_secs(15);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let left: Vec<&i64> = pids.iter().filter(|p| alive(**p)).collect();
    assert!(left.is_empty(), "qemu PIDs still alive after lab down: {left:?}");
    let pg = host(&["pgrep", "-a", "-f", &format!("{}/", lab_dir.display())]);
    assert!(pg.stdout.is_empty(), "processes of the lab remain:\n{}", text(&pg));
    let pg = host(&["pgrep", "-a", "-f", &format!("qemu-system.*{name}")]);
    assert!(pg.stdout.is_empty(), "qemu processes naming the lab remain:\n{}", text(&pg));
    let ns = String::from_utf8_lossy(&host(&["ip", "netns", "list"]).stdout).into_owned();
    assert!(!ns.split_whitespace().any(|w| w == netns), "network namespace {netns} remains:\n{ns}");
    let macs: Vec<&String> = f.taps.iter().map(|(_, m)| m).collect();
    let mut everywhere = taps(None);
    for other in ns.lines().filter_map(|l| l.split_whitespace().next()) {
        everywhere.extend(taps(Some(other)));
    }
    let stray: Vec<_> = everywhere.iter().filter(|(_, m)| macs.contains(&m)).collect();
    assert!(stray.is_empty(), "tap devices of the lab remain: {stray:?}");
    assert!(overlays.iter().all(|o| !o.exists()), "overlays remain: {overlays:?}");
    assert!(!lab_dir.exists(), "{} remains", lab_dir.display());

    let u = &f.up;
    eprintln!(
        "[lab] numbers: image {} {:.1}s; {} VMs ready (SSH) {:.1}s after start ({:.1}s boot after the image); \
         qemu RSS {} MiB; lab down {down_s:.1}s; lab up wall {:.0}s",
        u.image_state,
        u.image_s,
        u.rss.len(),
        u.ready_s,
        u.ready_s - u.image_s,
        u.rss.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(" / "),
        u.wall_s
    );
}
