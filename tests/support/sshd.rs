//! Private OpenSSH servers for tests: `/usr/sbin/sshd -D -e -f <config>` as root on 127.0.0.x addresses and
//! a free high port, with a host key made by `ssh-keygen`, an authorized_keys file and a pid file in a
//! temporary directory. Throwaway users with sudoers drop-ins for the sudo tests. Everything started here
//! is stopped (by pid) and removed on drop, also when a test fails.
//!
//! The tests run for real whenever they are compiled: a missing sshd, or not running as root, fails them
//! with a message saying what to install. `KUBEFORGE_SSH_TESTS=0` is the only way to skip them.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The sshd binary (Debian's openssh-server).
pub const SSHD: &str = "/usr/sbin/sshd";

/// Whether the sshd tests run. Panics with instructions when they should run but cannot.
pub fn enabled() -> bool {
    if std::env::var("KUBEFORGE_SSH_TESTS").as_deref() == Ok("0") {
        eprintln!("KUBEFORGE_SSH_TESTS=0: real-sshd test skipped");
        return false;
    }
    assert!(
        Path::new(SSHD).exists(),
        "{SSHD} is missing: install openssh-server (scripts/install-test-deps.sh installs it), \
         or set KUBEFORGE_SSH_TESTS=0 to skip the real-sshd tests"
    );
    assert!(
        nix::unistd::geteuid().is_root(),
        "the real-sshd tests start sshd and create users: run them as root, or set KUBEFORGE_SSH_TESTS=0"
    );
    for tool in ["ssh-keygen", "sudo", "useradd", "userdel", "chpasswd", "ss", "strace"] {
        assert!(
            Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().unwrap().status.success(),
            "`{tool}` is missing: run scripts/install-test-deps.sh, or set KUBEFORGE_SSH_TESTS=0"
        );
    }
    true
}

/// Runs a local command, panicking with its output when it fails.
pub fn sh(script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).output().expect("spawn sh");
    assert!(
        out.status.success(),
        "`{script}` failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A client key pair (ed25519, no passphrase) in its own directory, readable by every test user.
pub struct ClientKey {
    pub dir: tempfile::TempDir,
}

impl ClientKey {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("kf-ssh-client-").tempdir().unwrap();
        sh(&format!(
            "ssh-keygen -q -t ed25519 -N '' -C kubeforge-test -f {}/id_ed25519",
            dir.path().display()
        ));
        ClientKey { dir }
    }
    pub fn private(&self) -> PathBuf {
        self.dir.path().join("id_ed25519")
    }
    pub fn public(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("id_ed25519.pub")).unwrap()
    }
}

/// A running sshd.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub addrs: Vec<String>,
    child: Option<Child>,
}

/// A port that is free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Sshd {
    /// Starts sshd on `addrs` (127.0.0.x) and a free port, accepting `key`. `extra` is appended to the
    /// config (e.g. `AllowTcpForwarding no`).
    pub fn start(key: &ClientKey, addrs: &[&str], extra: &str) -> Sshd {
        let dir = tempfile::Builder::new().prefix("kf-sshd-").tempdir().unwrap();
        // sshd reads authorized_keys as the login user: non-root test users must be able to reach it.
        sh(&format!("chmod 755 {}", dir.path().display()));
        sh(&format!("ssh-keygen -q -t ed25519 -N '' -C test-host -f {}/host_ed25519", dir.path().display()));
        std::fs::write(dir.path().join("authorized_keys"), key.public()).unwrap();
        sh(&format!("chmod 644 {}/authorized_keys", dir.path().display()));
        let mut s = Sshd {
            dir,
            port: free_port(),
            addrs: addrs.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        s.write_config(extra);
        s.spawn();
        s
    }

    fn write_config(&self, extra: &str) {
        let d = self.dir.path().display();
        let listen: String = self.addrs.iter().map(|a| format!("ListenAddress {a}\n")).collect();
        // `extra` comes first: sshd takes the first value of a keyword.
        let config = format!(
            "{extra}\nPort {port}\n{listen}HostKey {d}/host_ed25519\nAuthorizedKeysFile {d}/authorized_keys\n\
             PidFile {d}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nMaxStartups 500\n\
             MaxSessions 50\nPrintMotd no\nLogLevel VERBOSE\n",
            port = self.port
        );
        std::fs::write(self.dir.path().join("sshd_config"), config).unwrap();
    }

    fn spawn(&mut self) {
        // The privilege separation directory sshd insists on (normally made by the ssh service unit).
        std::fs::create_dir_all("/run/sshd").unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(self.dir.path().join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sshd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sshd exited at start ({st}):\n{}", self.log());
            }
            let up = self.addrs.iter().all(|a| {
                TcpStream::connect_timeout(
                    &format!("{a}:{}", self.port).parse().unwrap(),
                    Duration::from_secs(1),
                )
                .is_ok()
            });
            if up {
                return;
            }
            assert!(Instant::now() < deadline, "sshd did not listen within 15 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again (same port, key and config) after [`Sshd::kill_all`].
    pub fn restart(&mut self) {
        self.kill_all();
        self.spawn();
    }

    /// Replaces the host key (a "reinstalled" host) and restarts.
    pub fn new_host_key(&mut self) {
        self.kill_all();
        let d = self.dir.path().display();
        sh(&format!("rm -f {d}/host_ed25519 {d}/host_ed25519.pub"));
        sh(&format!("ssh-keygen -q -t ed25519 -N '' -C test-host -f {d}/host_ed25519"));
        self.spawn();
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("sshd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `ssh-ed25519 AAAA...` of the host key.
    pub fn host_key(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("host_ed25519.pub")).unwrap();
        s.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
    }

    /// The `SHA256:...` fingerprint as OpenSSH prints it.
    pub fn fingerprint(&self) -> String {
        let out = sh(&format!("ssh-keygen -l -E sha256 -f {}/host_ed25519.pub", self.dir.path().display()));
        out.split_whitespace().nth(1).unwrap().to_string()
    }

    /// Kills the listener and every sshd process serving its connections (SIGKILL: a crash, as far as the
    /// client can tell). The users' own processes are left alone, as when sshd dies on a real host.
    pub fn kill_all(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let root = child.id() as i32;
        let sshd_descendants: Vec<i32> =
            descendants(root).into_iter().filter(|p| comm(*p).as_deref() == Some("sshd")).collect();
        for pid in std::iter::once(root).chain(sshd_descendants) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = child.wait();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Also end the sessions' processes (shells of timed-out commands and the like).
        if let Some(child) = &self.child {
            let all = descendants(child.id() as i32);
            self.kill_all();
            for pid in all {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_string())
}

fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may contain spaces, so split after the last `)`.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Every process below `root` (by parent pid, walked from /proc).
pub fn descendants(root: i32) -> Vec<i32> {
    let all: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| Some((p, ppid(p)?)))
        .collect();
    let mut out = vec![];
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (c, _) in all.iter().filter(|(_, pp)| *pp == p) {
            out.push(*c);
            frontier.push(*c);
        }
    }
    out
}

/// The processes whose real uid is `uid`.
fn processes_of(uid: u32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status")).ok().is_some_and(|s| {
                s.lines().any(|l| {
                    l.strip_prefix("Uid:").and_then(|r| r.split_whitespace().next()) == Some(&uid.to_string())
                })
            })
        })
        .collect()
}

/// A throwaway local user with a password and a sudoers drop-in; both are removed on drop.
pub struct TestUser {
    pub name: String,
    pub password: String,
    sudoers: PathBuf,
}

impl TestUser {
    /// Creates the user with `rule` as its sudoers line, e.g. `ALL=(ALL) NOPASSWD: ALL`.
    pub fn create(tag: &str, rule: &str) -> TestUser {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("kf{tag}{}x{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let password = format!("pw-{name}-Secret");
        let _ = Command::new("userdel").arg("-r").arg(&name).output();
        sh(&format!("useradd -m -s /bin/sh {name}"));
        sh(&format!("echo '{name}:{password}' | chpasswd"));
        let sudoers = PathBuf::from(format!("/etc/sudoers.d/kubeforge-test-{name}"));
        let user = TestUser { name, password, sudoers };
        std::fs::write(&user.sudoers, format!("{} {rule}\n", user.name)).unwrap();
        sh(&format!("chmod 0440 {0} && visudo -cf {0} >/dev/null", user.sudoers.display()));
        user
    }

    pub fn uid(&self) -> u32 {
        sh(&format!("id -u {}", self.name)).trim().parse().unwrap()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.sudoers);
        // The user's leftover processes (started by these tests) would make userdel refuse.
        let id = Command::new("id").arg("-u").arg(&self.name).output();
        if let Some(uid) = id.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u32>().ok())
        {
            for pid in processes_of(uid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = Command::new("userdel").arg("-r").arg(&self.name).output();
    }
}
