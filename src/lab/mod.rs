//! `kubeforge lab`: throwaway Debian VMs under QEMU, to try kubeforge and to test it end to end.
//!
//! The image is built once by `mmdebstrap` from the Debian archive the machine's apt already uses, with
//! systemd, OpenSSH, sudo and a sudo user `lab`, iptables/conntrack, containerd, runc, the CNI plugins and
//! etcd (installed but disabled: kubeforge configures them), and cached under the user's cache directory,
//! keyed by a hash of its inputs. Each VM boots the image's kernel through a copy-on-write overlay and gets its
//! identity (hostname, machine id, static address) from the kernel command line, so one image serves every
//! node. The VMs sit on a bridge inside a network namespace the lab creates (no uplink): kubeforge and kubectl
//! reach them by running inside it (`kubeforge lab exec -- ...`). KVM is used where real KVM exists; elsewhere
//! QEMU's software emulation, with timeouts that follow progress rather than a short fixed clock.

pub mod vagrant_box;

use crate::inventory::{ClusterSpec, HostSpec, Inventory, ReleaseSourceSpec, SshSpec};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The image's customize hook (embedded: the binary needs no repository files).
const CUSTOMIZE: &str = include_str!("../../templates/lab/customize.sh");
/// Packages of the image.
const PACKAGES: &[&str] = &[
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "systemd-sysv",
    "udev",
    "dbus",
    "libpam-systemd",
    "libnss-myhostname",
    "openssh-server",
    "iproute2",
    "iputils-ping",
    "kmod",
    "procps",
    "sudo",
    "iptables",
    "conntrack",
    "socat",
    "ethtool",
    "ebtables",
    "ca-certificates",
    "curl",
    "openssl",
    "etcd-server",
    "etcd-client",
    "containerd",
    "runc",
    "containernetworking-plugins",
];
/// Lab subnet inside every lab's own namespace (namespaces keep labs apart, so all may use it).
const SUBNET: &str = "10.77.0";

/// Arguments of `kubeforge lab`.
#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Build or reuse the image, boot the VMs, wait for SSH, write `lab/<name>/inventory.yaml`.
    Up(UpArgs),
    /// Power the VMs off and remove the namespace, taps and overlays.
    Down {
        /// Lab name.
        #[arg(long, default_value = "lab")]
        name: String,
    },
    /// VM states, addresses and uptime.
    Status {
        /// Lab name.
        #[arg(long, default_value = "lab")]
        name: String,
    },
    /// SSH to a node (as root), optionally running a command.
    Ssh {
        /// Lab name.
        #[arg(long, default_value = "lab")]
        name: String,
        /// Node name.
        node: String,
        /// Command to run.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Power one VM off: a clean `poweroff` inside it, or with `--kill` the plug pulled (QEMU killed), as a
    /// crashed or unplugged machine looks to the cluster.
    Stop {
        /// Lab name.
        #[arg(long, default_value = "lab")]
        name: String,
        /// Node name.
        node: String,
        /// Kill the VM at once instead of shutting it down.
        #[arg(long)]
        kill: bool,
    },
    /// Boot a stopped VM again from its disk (what was installed on it is still there) and wait for SSH.
    Start {
        /// Lab name.
        #[arg(long, default_value = "lab")]
        name: String,
        /// Node name.
        node: String,
        /// Seconds to wait for SSH (the clock restarts whenever the console shows progress).
        #[arg(long, default_value_t = 300)]
        ssh_timeout: u64,
    },
    /// Write the lab image as a Vagrant box for the libvirt provider (vagrant-libvirt) and print its path:
    /// `vagrant box add --name kubeforge/debian PATH`, then `vagrant/Vagrantfile` boots it. Builds the image
    /// first when it is not cached; the box is kept beside the cached image and reused.
    Box {
        /// Debian suite of the image (`trixie` or `bookworm`).
        #[arg(long, default_value = "trixie")]
        suite: String,
        /// Write the box here instead (always written anew).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Run a command inside the lab's network (where the node addresses are reachable).
    Exec {
        /// Lab name.
        #[arg(long, default_value = "lab")]
        name: String,
        /// Command to run.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// `lab up` arguments.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Lab name (also the cluster name).
    #[arg(long, default_value = "lab")]
    pub name: String,
    /// Number of VMs.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Memory per VM in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u32,
    /// Virtual CPUs per VM (default: 2 with KVM, 1 under software emulation). Under emulation each is a
    /// host thread and guests have no paravirtual spinlocks: on a quiet host two were a little faster (a first
    /// apply of three VMs 2m29s instead of 2m58s, `CPUS=2 bash benches/maintain.sh`), but with more busy
    /// vCPUs than host cores a guest's vCPU spins while the host has descheduled the one it waits for: with
    /// a build beside them the same steps took up to twice as long as with one vCPU.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub cpus: Option<u32>,
    /// Debian suite of the image (`trixie` or `bookworm`).
    #[arg(long, default_value = "trixie")]
    pub suite: String,
    /// `default` (node1 control plane + etcd, others workers), `ha` (three control planes with stacked etcd
    /// that also take workloads) or `single` (one VM with every role).
    #[arg(long, default_value = "default")]
    pub topology: String,
    /// Kubernetes version written into the inventory (default: the newest supported release).
    #[arg(long, default_value = crate::inventory::validate::DEFAULT_KUBERNETES_VERSION)]
    pub kubernetes_version: String,
    /// Release bundle the inventory installs from (default: the official release source).
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// Print how long each step took and the memory of each VM.
    #[arg(long)]
    pub timings: bool,
    /// Seconds to wait for every node's SSH (the clock restarts whenever a VM's console shows progress).
    #[arg(long, default_value_t = 300)]
    pub ssh_timeout: u64,
    /// Translation cache per VM in MiB under software emulation (QEMU's `tb-size`); by default QEMU's own
    /// 1024 where the host's memory allows, less on a small host.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub translation_cache: Option<u64>,
}

/// One VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vm {
    /// Node name.
    pub name: String,
    /// Address on the lab bridge.
    pub ip: String,
    /// QEMU's pidfile.
    pub pidfile: PathBuf,
    /// Serial console log.
    pub serial: PathBuf,
    /// Copy-on-write disk.
    pub overlay: PathBuf,
}

/// What `lab up` recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// Lab name.
    pub name: String,
    /// Network namespace.
    pub netns: String,
    /// Private key for root and `lab`.
    pub key: PathBuf,
    /// known_hosts with the image's host key.
    pub known_hosts: PathBuf,
    /// VMs.
    pub vms: Vec<Vm>,
    /// Memory per VM in MiB (to boot a stopped VM again alike).
    #[serde(default = "default_memory")]
    pub memory: u32,
    /// Virtual CPUs per VM (a lab from before this was recorded has one).
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// Debian suite of the image.
    #[serde(default = "default_suite")]
    pub suite: String,
    /// Translation cache per VM (MiB) the VMs were started with, under software emulation.
    #[serde(default)]
    pub translation_cache: Option<u64>,
}

impl LabState {
    /// The translation cache (MiB) each VM starts with: the one chosen at `lab up`; for a lab from before
    /// that was recorded, sized now for the `starting` VMs.
    fn translation_cache_mib(&self, starting: usize) -> u64 {
        self.translation_cache
            .unwrap_or_else(|| tcg_tb_size_mib(starting, self.memory.into(), host_available_mib()))
    }
}

fn default_memory() -> u32 {
    1024
}

fn default_cpus() -> u32 {
    1
}

fn default_suite() -> String {
    "trixie".into()
}

fn lab_dir(name: &str) -> PathBuf {
    PathBuf::from("lab").join(name)
}

fn run(what: &str, cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("{what}: cannot run {:?}", cmd.get_program()), e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(Error::msg(format!("{what} failed ({}):\n  {}", out.status, tail.join("\n  ")), None));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn check_host() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err(Error::msg("the lab needs root (network namespaces, taps)", Some("run it with sudo")));
    }
    let missing: Vec<&str> =
        ["qemu-system-x86_64", "mmdebstrap", "mke2fs", "qemu-img", "ip", "ssh", "ssh-keygen"]
            .into_iter()
            .filter(|t| which(t).is_none())
            .collect();
    if !missing.is_empty() {
        return Err(Error::msg(
            format!("missing host tools: {}", missing.join(", ")),
            Some("on Debian 12: bash tests/lab/install-host-deps.sh (qemu-system-x86 and mmdebstrap from bookworm-backports)"),
        ));
    }
    Ok(())
}

fn which(t: &str) -> Option<PathBuf> {
    std::env::var("PATH").ok()?.split(':').map(|d| Path::new(d).join(t)).find(|p| p.is_file())
}

/// The Debian archive and security archive URLs the machine's apt already uses.
fn mirrors() -> Result<(String, Option<String>)> {
    let mut uris = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "sources") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                uris.extend(
                    text.lines()
                        .filter_map(|l| l.strip_prefix("URIs:"))
                        .flat_map(|u| u.split_whitespace().map(str::to_owned)),
                );
            }
        }
    }
    let list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    uris.extend(
        list.lines()
            .filter(|l| l.starts_with("deb "))
            .filter_map(|l| l.split_whitespace().find(|w| w.contains("://")).map(str::to_owned)),
    );
    let security = uris.iter().find(|u| u.trim_end_matches('/').ends_with("debian-security")).cloned();
    let main =
        uris.iter().find(|u| u.trim_end_matches('/').ends_with("/debian")).cloned().ok_or_else(|| {
            Error::msg(
                "no Debian archive in the apt sources",
                Some("the lab builds its image from the archive apt uses"),
            )
        })?;
    Ok((main, security))
}

/// A built image.
pub struct Image {
    /// Directory holding it.
    pub dir: PathBuf,
    /// Whether it was built now (false: cache hit).
    pub built: bool,
}

fn sha256_hex(parts: &[&str]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// Builds the image for `suite` unless the cache has it.
pub fn ensure_image(suite: &str) -> Result<Image> {
    let key = sha256_hex(&[suite, &PACKAGES.join(","), CUSTOMIZE, "image-v1"]);
    let root = dirs::cache_dir().unwrap_or_else(|| PathBuf::from(".cache")).join("kubeforge/lab");
    let dir = root.join(&key[..16]);
    if dir.join("ready").exists() {
        return Ok(Image { dir, built: false });
    }
    // One builder at a time: a second `lab up` on a cold cache would otherwise delete the directory the
    // first is building in. It waits here, then finds the image ready.
    std::fs::create_dir_all(&root).map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
    let lock_path = root.join(format!("{}.lock", &key[..16]));
    let lock_file = std::fs::File::create(&lock_path)
        .map_err(|e| Error::io(format!("creating {}", lock_path.display()), e))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::io(format!("locking {}", lock_path.display()), e.into()))?;
    if dir.join("ready").exists() {
        return Ok(Image { dir, built: false });
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let dir = dir.canonicalize().map_err(|e| Error::io("resolving the cache path", e))?;
    run(
        "ssh-keygen",
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "kubeforge-lab", "-f"])
            .arg(dir.join("id_ed25519")),
    )?;
    let hook = dir.join("customize.sh");
    std::fs::write(&hook, CUSTOMIZE).map_err(|e| Error::io("writing the image hook", e))?;
    let rootfs = dir.join("rootfs");
    let (mirror, security) = mirrors()?;
    let mut cmd = Command::new("mmdebstrap");
    cmd.args([
        "--mode=root",
        "--variant=apt",
        "--format=directory",
        "--aptopt=APT::Install-Recommends \"false\"",
    ])
    .arg(format!("--include={}", PACKAGES.join(",")))
    .arg(format!(
        "--customize-hook=KF_PUBKEY={} KF_OUT={} sh {} \"$1\"",
        dir.join("id_ed25519.pub").display(),
        dir.display(),
        hook.display()
    ))
    .arg(suite)
    .arg(&rootfs)
    .arg(format!("deb {mirror} {suite} main"))
    .arg(format!("deb {mirror} {suite}-updates main"));
    if let Some(sec) = security {
        cmd.arg(format!("deb {sec} {suite}-security main"));
    }
    run("building the lab image with mmdebstrap", &mut cmd)?;
    run(
        "making the disk image",
        Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-L", "labroot", "-d"])
            .arg(&rootfs)
            .arg(dir.join("base.raw"))
            .arg("3G"),
    )?;
    let _ = std::fs::remove_dir_all(&rootfs);
    std::fs::write(dir.join("ready"), key).map_err(|e| Error::io("marking the image ready", e))?;
    Ok(Image { dir, built: true })
}

fn kvm_usable() -> bool {
    // /dev/kvm alone proves nothing (PVM hosts expose it but cannot boot a stock kernel).
    Path::new("/dev/kvm").exists()
        && (Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists())
}

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); look at its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

fn read_pid(p: &Path) -> Option<i32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn ssh_cmd(st: &LabState, ip: &str, user: &str) -> Command {
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        &st.netns,
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=30",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "LogLevel=ERROR",
    ])
    .arg("-o")
    .arg(format!("UserKnownHostsFile={}", st.known_hosts.display()))
    .arg("-i")
    .arg(&st.key)
    .arg(format!("{user}@{ip}"));
    c
}

fn load_state(name: &str) -> Result<LabState> {
    let p = lab_dir(name).join("lab.json");
    let text = std::fs::read(&p)
        .map_err(|e| Error::io(format!("no lab `{name}` here (reading {})", p.display()), e))?;
    serde_json::from_slice(&text).map_err(|e| Error::msg(format!("{}: {e}", p.display()), None))
}

fn save_state(st: &LabState) -> Result<()> {
    let p = lab_dir(&st.name).join("lab.json");
    std::fs::write(&p, serde_json::to_vec_pretty(st).expect("json"))
        .map_err(|e| Error::io(format!("writing {}", p.display()), e))
}

fn roles(topology: &str, i: usize, n: usize) -> Result<Vec<String>> {
    let v: &[&str] = match (topology, i) {
        ("single", _) if n == 1 => &["control-plane", "etcd", "worker"],
        ("single", _) => return Err(Error::msg("topology `single` is one VM", Some("use --nodes 1"))),
        ("ha", 0..=2) if n >= 3 => &["control-plane", "etcd", "worker"],
        ("ha", _) if n < 3 => {
            return Err(Error::msg("topology `ha` needs at least 3 VMs", Some("use --nodes 3")))
        }
        ("ha", _) => &["worker"],
        ("default", 0) if n == 1 => &["control-plane", "etcd", "worker"],
        ("default", 0) => &["control-plane", "etcd"],
        ("default", _) => &["worker"],
        (t, _) => {
            return Err(Error::msg(format!("unknown topology `{t}`"), Some("use default, ha or single")))
        }
    };
    Ok(v.iter().map(|s| s.to_string()).collect())
}

/// Writes the lab's inventory (serde, never string-built YAML).
fn write_inventory(a: &UpArgs, st: &LabState, host_key: &str) -> Result<PathBuf> {
    let hosts = st
        .vms
        .iter()
        .enumerate()
        .map(|(i, vm)| {
            Ok(HostSpec {
                name: vm.name.clone(),
                address: vm.ip.clone(),
                roles: roles(&a.topology, i, st.vms.len())?,
                ssh: Some(SshSpec { host_key: Some(host_key.to_owned()), ..Default::default() }),
                ..Default::default()
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let bundle = match &a.bundle {
        Some(b) => Some(ReleaseSourceSpec::Bundle {
            path: b
                .canonicalize()
                .map_err(|e| Error::io(format!("bundle {}", b.display()), e))?
                .display()
                .to_string(),
        }),
        None => None,
    };
    let components = match &a.bundle {
        Some(b) => bundle_components(b, &a.kubernetes_version)?,
        None => Default::default(),
    };
    let extra_args = if kvm_usable() { Default::default() } else { emulation_extra_args() };
    let inv = Inventory {
        cluster: ClusterSpec {
            name: a.name.clone(),
            kubernetes_version: a.kubernetes_version.clone(),
            release_source: bundle,
            components,
            extra_args,
            ..Default::default()
        },
        ssh: SshSpec {
            user: Some("root".into()),
            identity_file: Some(st.key.display().to_string()),
            agent: Some(false),
            // The lab's VMs live in its private network: an admin's own ~/.ssh/config (a catch-all
            // ProxyJump, say) must not apply to them.
            config_file: Some("none".into()),
            // An emulated guest does the SSH handshake's crypto about twenty times slower, and a busy host
            // can hold it off for seconds more: 15 s was seen to run out.
            connect_timeout: (!kvm_usable()).then(|| EMULATED_CONNECT_TIMEOUT.to_owned()),
            ..Default::default()
        },
        hosts,
    };
    let p = lab_dir(&a.name).join("inventory.yaml");
    // Unset settings are left out rather than written as `null`, as a person would write the file.
    let mut value = serde_yaml::to_value(&inv).expect("yaml");
    prune(&mut value);
    let text = format!(
        "# Written by `kubeforge lab up --name {}`: the lab's VMs, reachable inside network namespace {}.\n{}",
        a.name,
        st.netns,
        serde_yaml::to_string(&value).expect("yaml")
    );
    std::fs::write(&p, text).map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
    Ok(p)
}

/// What an SSH connection to a software-emulated VM may take: the guest does the handshake's crypto about
/// twenty times slower, and a busy host can hold it off for seconds more (15 s was seen to run out).
pub const EMULATED_CONNECT_TIMEOUT: &str = "60s";

/// `extraArgs` for a cluster of software-emulated VMs (QEMU without KVM), which are starved of CPU for
/// seconds at a time: etcd's raft timing is relaxed beyond kubeforge's default (250 ms / 2.5 s) so that a
/// busy member does not trigger elections that stall the API (etcd's tuning guide: an election timeout of
/// about ten heartbeats), and the apiserver's readiness check waits 10 s for etcd instead of 2 s, since a
/// quorum read takes seconds there, not milliseconds.
pub fn emulation_extra_args() -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>
{
    let args = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    [
        ("etcd".to_owned(), args(&[("heartbeat-interval", "500"), ("election-timeout", "5000")])),
        ("kube-apiserver".to_owned(), args(&[("etcd-readycheck-timeout", "10s")])),
    ]
    .into_iter()
    .collect()
}

/// The component versions to pin so the inventory installs exactly what `bundle` holds: its newest etcd and
/// its newest kubectl within the version-skew policy of the Kubernetes version (one minor either side; the
/// newest of all when none is). The container runtime is not pinned: each Kubernetes minor's default
/// (src/artifacts/versions.rs) is installed from the bundle when the bundle has it, else the nodes' own
/// runtime is used. Fails early when the bundle lacks the Kubernetes version asked for.
pub fn bundle_components(bundle: &Path, kubernetes: &str) -> Result<crate::inventory::ComponentVersions> {
    let m = crate::artifacts::bundle::Bundle::open(bundle, &crate::artifacts::default_cache_dir())?;
    let versions = |c: &str| -> Vec<String> {
        let mut v: Vec<String> =
            m.manifest.artifacts.iter().filter(|a| a.component == c).map(|a| a.version.clone()).collect();
        v.sort_by_key(|s| s.parse::<crate::inventory::validate::Version>().ok());
        v
    };
    let want = if kubernetes.starts_with('v') { kubernetes.to_owned() } else { format!("v{kubernetes}") };
    if !versions("kube-apiserver").contains(&want) {
        return Err(Error::msg(
            format!("bundle {} has no Kubernetes {want}", bundle.display()),
            Some("pick --kubernetes-version from the bundle's manifest.json"),
        ));
    }
    let k: Option<crate::inventory::validate::Version> = want.parse().ok();
    let kubectls = versions("kubectl");
    let in_skew =
        kubectls.iter().rev().find(|v| match (v.parse::<crate::inventory::validate::Version>().ok(), k) {
            (Some(v), Some(k)) => v.major == k.major && v.minor.abs_diff(k.minor) <= 1,
            _ => false,
        });
    Ok(crate::inventory::ComponentVersions {
        etcd: versions("etcd").pop(),
        kubectl: in_skew.cloned().or_else(|| kubectls.last().cloned()),
        ..Default::default()
    })
}

/// Removes nulls and empty collections from a YAML value.
fn prune(v: &mut serde_yaml::Value) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            for (_, val) in m.iter_mut() {
                prune(val);
            }
            m.retain(|_, val| match val {
                serde_yaml::Value::Null => false,
                serde_yaml::Value::Mapping(x) => !x.is_empty(),
                serde_yaml::Value::Sequence(x) => !x.is_empty(),
                _ => true,
            });
        }
        serde_yaml::Value::Sequence(s) => s.iter_mut().for_each(prune),
        _ => {}
    }
}

fn up(a: UpArgs) -> Result<i32> {
    if !(1..=9).contains(&a.nodes) {
        return Err(Error::msg("a lab has 1 to 9 VMs", None));
    }
    // A wrong --bundle (missing, not a bundle, or without the Kubernetes version asked for) is reported
    // before anything else: before the host checks, the image build and minutes of booting VMs.
    if let Some(b) = &a.bundle {
        bundle_components(b, &a.kubernetes_version)?;
    }
    check_host()?;
    let dir = lab_dir(&a.name);
    if dir.join("lab.json").exists() {
        return Err(Error::msg(
            format!("lab `{}` exists already", a.name),
            Some("kubeforge lab down --name NAME first, or pick another --name"),
        ));
    }
    let t0 = Instant::now();
    let image = ensure_image(&a.suite)?;
    let t_image = t0.elapsed();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let dir = dir.canonicalize().map_err(|e| Error::io("resolving the lab dir", e))?;
    let host_key_line = std::fs::read_to_string(image.dir.join("host_key.pub"))
        .map_err(|e| Error::io("reading the image host key", e))?;
    let host_key = host_key_line.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let known_hosts = dir.join("known_hosts");
    std::fs::write(&known_hosts, format!("* {host_key}\n"))
        .map_err(|e| Error::io("writing known_hosts", e))?;
    let netns = format!("kf-{}", a.name);
    let mut st = LabState {
        name: a.name.clone(),
        netns: netns.clone(),
        key: image.dir.join("id_ed25519"),
        known_hosts,
        vms: Vec::new(),
        memory: a.memory,
        cpus: a.cpus.unwrap_or(if kvm_usable() { 2 } else { 1 }),
        suite: a.suite.clone(),
        translation_cache: Some(
            a.translation_cache
                .unwrap_or_else(|| tcg_tb_size_mib(a.nodes, a.memory.into(), host_available_mib())),
        ),
    };
    for i in 0..a.nodes {
        let name = format!("node{}", i + 1);
        st.vms.push(Vm {
            ip: format!("{SUBNET}.{}", 11 + i),
            pidfile: dir.join(format!("{name}.pid")),
            serial: dir.join(format!("{name}.serial.log")),
            overlay: dir.join(format!("{name}.qcow2")),
            name,
        });
    }
    save_state(&st)?;
    // From here on, any failure tears down what was started.
    if let Err(e) = boot(&a, &st, &image) {
        let _ = teardown(&st);
        return Err(e);
    }
    let t_ready = t0.elapsed();
    let inv = write_inventory(&a, &st, &host_key)?;
    println!("lab `{}` is up: {} VM(s) in network namespace {}", a.name, st.vms.len(), netns);
    println!(
        "accelerator: {}",
        if kvm_usable() {
            "kvm".to_string()
        } else {
            format!(
                "software emulation (TCG, no usable KVM, {} MiB translation cache per VM): slow; the inventory relaxes etcd's and the apiserver's timing",
                st.translation_cache_mib(st.vms.len())
            )
        }
    );
    for vm in &st.vms {
        println!("  {:<8} {}", vm.name, vm.ip);
    }
    println!("inventory: {}", inv.display());
    println!("next: kubeforge lab exec --name {} -- kubeforge apply -i {}", a.name, inv.display());
    if a.timings {
        println!(
            "timings: image {} {:.1}s, VMs ready (SSH) {:.1}s after start",
            if image.built { "built" } else { "cached" },
            t_image.as_secs_f64(),
            t_ready.as_secs_f64()
        );
        for vm in &st.vms {
            let rss = read_pid(&vm.pidfile)
                .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
                })
                .and_then(|kb| kb.parse::<u64>().ok())
                .unwrap_or(0);
            println!("  {} qemu RSS {} MiB", vm.name, rss / 1024);
        }
    }
    Ok(0)
}

fn boot(a: &UpArgs, st: &LabState, image: &Image) -> Result<()> {
    let ns = &st.netns;
    let ipn = |args: &[&str]| -> Result<String> {
        run(&format!("ip {}", args.join(" ")), Command::new("ip").args(args))
    };
    ipn(&["netns", "add", ns])?;
    ipn(&["-n", ns, "link", "set", "lo", "up"])?;
    ipn(&["-n", ns, "link", "add", "br0", "type", "bridge"])?;
    ipn(&["-n", ns, "addr", "add", &format!("{SUBNET}.1/24"), "dev", "br0"])?;
    ipn(&["-n", ns, "link", "set", "br0", "up"])?;
    let tb = st.translation_cache_mib(st.vms.len());
    for (i, vm) in st.vms.iter().enumerate() {
        let tap = format!("tap{}", i + 1);
        ipn(&["-n", ns, "tuntap", "add", "dev", &tap, "mode", "tap"])?;
        ipn(&["-n", ns, "link", "set", &tap, "master", "br0", "up"])?;
        run(
            "creating the VM disk",
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(image.dir.join("base.raw"))
                .arg(&vm.overlay)
                .arg("8G"),
        )?;
        start_vm(st, image, i, tb)?;
    }
    wait_ssh(st, st.vms.iter().collect(), Duration::from_secs(a.ssh_timeout))
}

/// QEMU's own default translation cache under software emulation, per VM.
const TB_MAX_MIB: u64 = 1024;
/// The least translation cache a VM gets (a small host: slow, but it boots).
const TB_MIN_MIB: u64 = 64;
/// Memory left to the host itself when sizing the translation caches.
const HOST_RESERVE_MIB: u64 = 2048;

/// The translation cache (`tb-size`, MiB) of each of `vms` VMs of `guest_mib` each under software
/// emulation, given the host's available memory. The cache holds the host code translated from the guest's;
/// when it fills, QEMU throws every translation away and translates again. A node running etcd, the
/// control plane and Go clients such as kubectl keeps more code hot than 64 MiB holds: on the lab, QEMU's
/// default of 1 GiB made a cold apply 1.2-1.7x, a no-op apply 2x and guest commands 5x faster than 64 MiB
/// (`benches/lab-tcg.sh`). That default is used where the memory is there (a touched cache stays
/// resident), else an equal share of what is left after the guests, never under 64 MiB.
fn tcg_tb_size_mib(vms: usize, guest_mib: u64, available_mib: Option<u64>) -> u64 {
    let Some(avail) = available_mib else { return TB_MAX_MIB };
    let vms = vms.max(1) as u64;
    let spare = avail.saturating_sub(HOST_RESERVE_MIB + vms * guest_mib) / vms;
    spare.clamp(TB_MIN_MIB, TB_MAX_MIB)
}

/// `MemAvailable` of the host, in MiB.
fn host_available_mib() -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// Starts QEMU for the `i`-th VM on its tap and overlay (both exist already), with a translation cache of
/// `tb_mib` under software emulation.
fn start_vm(st: &LabState, image: &Image, i: usize, tb_mib: u64) -> Result<()> {
    let vm = &st.vms[i];
    let tcg = format!("tcg,thread=multi,tb-size={tb_mib}");
    let accel = if kvm_usable() { "kvm" } else { tcg.as_str() };
    let cpu = if kvm_usable() { "host" } else { "qemu64" };
    let tap = format!("tap{}", i + 1);
    let machine_id = &sha256_hex(&[&st.name, &vm.name])[..32];
    let append = format!(
        "root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.firstboot=off ip={ip}::{SUBNET}.1:255.255.255.0:{n}:eth0:none systemd.hostname={n} systemd.machine_id={machine_id}",
        ip = vm.ip,
        n = vm.name
    );
    let _ = std::fs::remove_file(&vm.pidfile);
    run(
        &format!("starting {}", vm.name),
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &st.netns,
                "qemu-system-x86_64",
                "-name",
                &vm.name,
                "-machine",
                "q35",
                "-accel",
                accel,
                "-cpu",
                cpu,
                "-smp",
                &st.cpus.to_string(),
            ])
            .args(["-m", &st.memory.to_string(), "-kernel"])
            .arg(image.dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(image.dir.join("initrd.img"))
            .args(["-append", &append, "-drive"])
            .arg(format!("file={},format=qcow2,if=virtio,cache=unsafe,discard=unmap", vm.overlay.display()))
            .args(["-netdev", &format!("tap,id=n0,ifname={tap},script=no,downscript=no"), "-device"])
            .arg(format!("virtio-net-pci,netdev=n0,mac=52:54:00:77:00:{:02x}", 11 + i))
            .args(["-device", "virtio-rng-pci", "-device", "virtio-balloon-pci,free-page-reporting=on"])
            .args(["-display", "none", "-vga", "none", "-monitor", "none", "-serial"])
            .arg(format!("file:{}", vm.serial.display()))
            .arg("-pidfile")
            .arg(&vm.pidfile)
            .arg("-daemonize"),
    )?;
    Ok(())
}

/// Waits for SSH on `vms`. The clock restarts whenever a console log grows: a slow but booting VM is waited
/// for; a stuck one is not.
fn wait_ssh(st: &LabState, mut pending: Vec<&Vm>, limit: Duration) -> Result<()> {
    let mut last_progress = Instant::now();
    let mut sizes: Vec<u64> = vec![0; pending.len()];
    while !pending.is_empty() {
        for (i, vm) in pending.iter().enumerate() {
            let s = std::fs::metadata(&vm.serial).map(|m| m.len()).unwrap_or(0);
            if s != sizes[i] {
                sizes[i] = s;
                last_progress = Instant::now();
            }
        }
        let mut still = Vec::new();
        let mut still_sizes = Vec::new();
        for (vm, size) in pending.into_iter().zip(sizes) {
            if read_pid(&vm.pidfile).is_some_and(|p| !alive(p)) {
                return Err(Error::msg(
                    format!("{} exited while booting; console:\n{}", vm.name, tail(&vm.serial, 20)),
                    None,
                ));
            }
            let ok = ssh_cmd(st, &vm.ip, "root")
                .arg("true")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                still.push(vm);
                still_sizes.push(size);
            }
        }
        (pending, sizes) = (still, still_sizes);
        if !pending.is_empty() {
            if last_progress.elapsed() > limit {
                let vm = pending[0];
                return Err(Error::msg(
                    format!(
                        "{} did not answer SSH within {} s of its last console output; console:\n{}",
                        vm.name,
                        limit.as_secs(),
                        tail(&vm.serial, 20)
                    ),
                    Some("the machine may be overloaded; raise --ssh-timeout"),
                ));
            }
            std::thread::sleep(Duration::from_secs(3));
        }
    }
    Ok(())
}

/// `lab stop`: a clean poweroff from inside (killed when it has not finished after 120 s), or with `kill`
/// the QEMU process killed at once.
fn stop_vm(st: &LabState, vm: &Vm, kill: bool) -> Result<()> {
    let Some(pid) = read_pid(&vm.pidfile).filter(|p| alive(*p)) else {
        println!("{} is not running", vm.name);
        return Ok(());
    };
    let t = Instant::now();
    let signal = |s| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), s);
    if kill {
        let _ = signal(nix::sys::signal::Signal::SIGKILL);
    } else {
        let _ = ssh_cmd(st, &vm.ip, "root")
            .arg("systemctl poweroff")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    while alive(pid) {
        if t.elapsed() > Duration::from_secs(120) {
            let _ = signal(nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "{} is {} ({:.1}s)",
        vm.name,
        if kill { "killed" } else { "powered off" },
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn tail(p: &Path, n: usize) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Stops every VM (SIGTERM, then SIGKILL, by recorded PID), removes the namespace (with its bridge and taps)
/// and the lab directory.
pub fn teardown(st: &LabState) -> Result<()> {
    let pids: Vec<i32> = st.vms.iter().filter_map(|v| read_pid(&v.pidfile)).filter(|p| alive(*p)).collect();
    for p in &pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    for p in pids.iter().filter(|p| alive(**p)) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), nix::sys::signal::Signal::SIGKILL);
    }
    let _ = Command::new("ip").args(["netns", "del", &st.netns]).stderr(Stdio::null()).status();
    let dir = lab_dir(&st.name);
    std::fs::remove_dir_all(&dir).map_err(|e| Error::io(format!("removing {}", dir.display()), e))
}

fn find_vm<'a>(st: &'a LabState, node: &str) -> Result<&'a Vm> {
    st.vms.iter().find(|v| v.name == node).ok_or_else(|| {
        Error::msg(
            format!("no node `{node}` in lab `{}`", st.name),
            Some("`kubeforge lab status --name NAME` lists its nodes"),
        )
    })
}

/// Runs `kubeforge lab ...`.
pub fn run_command(cmd: LabCommand) -> Result<i32> {
    match cmd {
        LabCommand::Up(a) => up(a),
        LabCommand::Down { name } => {
            let st = load_state(&name)?;
            let t = Instant::now();
            teardown(&st)?;
            println!("lab `{name}` is down ({:.1}s)", t.elapsed().as_secs_f64());
            Ok(0)
        }
        LabCommand::Status { name } => {
            let st = load_state(&name)?;
            println!("lab `{}`: network namespace {}", st.name, st.netns);
            for vm in &st.vms {
                let pid = read_pid(&vm.pidfile);
                let state = match pid {
                    Some(p) if alive(p) => {
                        let up = std::fs::metadata(&vm.pidfile)
                            .and_then(|m| m.modified())
                            .ok()
                            .and_then(|t| t.elapsed().ok());
                        format!(
                            "running (pid {p}, up {})",
                            up.map(|d| format!("{}s", d.as_secs())).unwrap_or_default()
                        )
                    }
                    _ => "stopped".into(),
                };
                println!("  {:<8} {:<14} {state}", vm.name, vm.ip);
            }
            Ok(0)
        }
        LabCommand::Ssh { name, node, command } => {
            let st = load_state(&name)?;
            let vm = find_vm(&st, &node)?;
            let status = ssh_cmd(&st, &vm.ip, "root")
                .args(&command)
                .status()
                .map_err(|e| Error::io("running ssh", e))?;
            Ok(status.code().unwrap_or(1))
        }
        LabCommand::Stop { name, node, kill } => {
            let st = load_state(&name)?;
            stop_vm(&st, find_vm(&st, &node)?, kill)?;
            Ok(0)
        }
        LabCommand::Start { name, node, ssh_timeout } => {
            let st = load_state(&name)?;
            let vm = find_vm(&st, &node)?;
            if read_pid(&vm.pidfile).is_some_and(alive) {
                println!("{node} is running already");
                return Ok(0);
            }
            let t = Instant::now();
            let image = ensure_image(&st.suite)?;
            let i = st.vms.iter().position(|v| v.name == node).expect("found");
            start_vm(&st, &image, i, st.translation_cache_mib(1))?;
            wait_ssh(&st, vec![vm], Duration::from_secs(ssh_timeout))?;
            println!("{node} is up ({:.1}s)", t.elapsed().as_secs_f64());
            Ok(0)
        }
        LabCommand::Box { suite, out: output } => {
            check_host()?;
            let image = ensure_image(&suite)?;
            let cached = image.dir.join("kubeforge-debian.box");
            let out = output.unwrap_or(cached.clone());
            if out == cached && out.exists() {
                eprintln!("lab box: reusing {}", out.display());
            } else {
                let t = Instant::now();
                let size = vagrant_box::write_box(&image, &suite, &out)?;
                eprintln!(
                    "lab box: wrote {} ({} MB) in {:.1}s",
                    out.display(),
                    size / 1_000_000,
                    t.elapsed().as_secs_f64()
                );
            }
            println!("{}", out.display());
            Ok(0)
        }
        LabCommand::Exec { name, command } => {
            let st = load_state(&name)?;
            let mut child = Command::new("ip")
                .args(["netns", "exec", &st.netns])
                .args(&command)
                .spawn()
                .map_err(|e| Error::io("running the command", e))?;
            // Ctrl-C and SIGTERM are the command's to handle (a command that writes finishes its step).
            crate::cleanup::forward_to(child.id());
            let status = child.wait().map_err(|e| Error::io("running the command", e))?;
            use std::os::unix::process::ExitStatusExt;
            Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation_cache_is_qemus_default_where_memory_allows_and_shares_what_is_left_otherwise() {
        let tb = tcg_tb_size_mib;
        // 24 GiB free, 3 VMs of 1 GiB: QEMU's default.
        assert_eq!(tb(3, 1024, Some(24 * 1024)), 1024);
        // 8 GiB free: (8192 - 2048 - 3072) / 3.
        assert_eq!(tb(3, 1024, Some(8192)), 1024);
        assert_eq!(tb(3, 1024, Some(7000)), 626);
        // No room: the floor.
        assert_eq!(tb(3, 1024, Some(3000)), 64);
        assert_eq!(tb(0, 1024, Some(100)), 64);
        // Unknown memory: QEMU's default.
        assert_eq!(tb(50, 1024, None), 1024);
    }

    #[test]
    fn the_lab_pins_a_kubectl_within_skew_of_its_kubernetes() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |c: &str, v: &str| {
            format!(
                r#"{{"component":"{c}","version":"{v}","os":"linux","arch":"amd64","file":"{c}/{v}/{c}","sha256":"{}","kind":"binary"}}"#,
                "0".repeat(64)
            )
        };
        let entries = [
            entry("kube-apiserver", "v1.35.8"),
            entry("kube-apiserver", "v1.37.1"),
            entry("etcd", "v3.5.1"),
            entry("etcd", "v3.4.23"),
            entry("kubectl", "v1.37.1"),
            entry("kubectl", "v1.36.4"),
        ];
        std::fs::write(
            dir.path().join("manifest.json"),
            format!(r#"{{"schema":1,"artifacts":[{}]}}"#, entries.join(",")),
        )
        .unwrap();
        let c = bundle_components(dir.path(), "v1.35.8").unwrap();
        assert_eq!((c.etcd.as_deref(), c.kubectl.as_deref()), (Some("v3.5.1"), Some("v1.36.4")));
        assert_eq!(bundle_components(dir.path(), "v1.37.1").unwrap().kubectl.as_deref(), Some("v1.37.1"));
        assert_eq!(c.containerd, None, "the runtime follows the minor's default");
        let e = bundle_components(dir.path(), "v1.36.4").unwrap_err();
        assert!(e.to_string().contains("has no Kubernetes v1.36.4"), "{e}");
        // The lab's default is the newest supported release.
        let d: crate::inventory::validate::Version =
            crate::inventory::validate::DEFAULT_KUBERNETES_VERSION.parse().unwrap();
        assert_eq!(d.minor, *crate::inventory::validate::SUPPORTED_MINORS.end());
    }

    #[test]
    fn topologies_give_valid_role_sets() {
        assert_eq!(roles("default", 0, 3).unwrap(), ["control-plane", "etcd"]);
        assert_eq!(roles("default", 2, 3).unwrap(), ["worker"]);
        assert_eq!(roles("single", 0, 1).unwrap(), ["control-plane", "etcd", "worker"]);
        assert!(roles("single", 0, 2).is_err());
        assert_eq!(roles("ha", 2, 3).unwrap(), ["control-plane", "etcd", "worker"]);
        assert!(roles("ha", 0, 2).is_err());
    }

    #[test]
    fn the_written_inventory_passes_validation() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        std::fs::write(&key, "k").unwrap();
        let st = LabState {
            name: "t".into(),
            netns: "kf-t".into(),
            key: key.clone(),
            known_hosts: dir.path().join("kh"),
            vms: (1..=3)
                .map(|i| Vm {
                    name: format!("node{i}"),
                    ip: format!("10.77.0.{}", 10 + i),
                    pidfile: PathBuf::new(),
                    serial: PathBuf::new(),
                    overlay: PathBuf::new(),
                })
                .collect(),
            memory: 1024,
            cpus: 2,
            suite: "trixie".into(),
            translation_cache: None,
        };
        for topology in ["default", "ha"] {
            let a = UpArgs {
                name: "t".into(),
                nodes: 3,
                memory: 1024,
                cpus: None,
                suite: "trixie".into(),
                topology: topology.into(),
                kubernetes_version: crate::inventory::validate::DEFAULT_KUBERNETES_VERSION.into(),
                bundle: None,
                timings: false,
                ssh_timeout: 1,
                translation_cache: None,
            };
            let cwd = std::env::current_dir().unwrap();
            std::env::set_current_dir(dir.path()).unwrap();
            std::fs::create_dir_all("lab/t").unwrap();
            let p = write_inventory(
                &a,
                &st,
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
            )
            .unwrap();
            let res = crate::inventory::load(&dir.path().join(&p));
            std::env::set_current_dir(cwd).unwrap();
            let loaded = res.unwrap_or_else(|e| panic!("{topology}: {e}"));
            assert_eq!(loaded.inventory.hosts.len(), 3);
        }
    }
}
