//! Stamped copies of the doubles binary under the official names, plus process helpers for tests.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Writes `dir/<component>` = the doubles binary stamped with `version`; returns its path.
pub fn stamped(dir: &Path, component: &str, version: &str) -> PathBuf {
    let out_dir = dir.join(version);
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join(component);
    if !out.exists() {
        // One stamped copy per version, hard-linked under each component name (stamping scans the file).
        let master = out_dir.join("kubeforge-doubles");
        if !master.exists() {
            let src = env!("CARGO_BIN_EXE_kubeforge-doubles");
            let mut bytes = std::fs::read(src).unwrap();
            kubeforge_doubles::version::stamp(&mut bytes, version).unwrap();
            let tmp = master.with_extension("tmp");
            std::fs::write(&tmp, &bytes).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::rename(&tmp, &master).unwrap();
        }
        std::fs::hard_link(&master, &out).unwrap();
    }
    out
}

/// Runs to completion (with a timeout); returns (exit code, stdout, stderr).
pub fn run(bin: &Path, args: &[String], timeout: Duration) -> (i32, String, String) {
    let mut child =
        Command::new(bin).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            return (
                -999,
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A background process killed on drop; its stderr goes to a log file shown on failure.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Log path.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `bin args` with stdout+stderr to `log`.
    pub fn start(bin: &Path, args: &[String], log: &Path) -> Self {
        let f = std::fs::File::create(log).unwrap();
        let child = Command::new(bin).args(args).stdout(f.try_clone().unwrap()).stderr(f).spawn().unwrap();
        Self { child, log: log.to_path_buf() }
    }
    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Whether it has exited.
    pub fn exited(&mut self) -> Option<i32> {
        self.child.try_wait().unwrap().map(|s| s.code().unwrap_or(-1))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// A free TCP port on `ip`.
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

/// Whether something listens on ip:port.
pub fn listening(ip: &str, port: u16) -> bool {
    std::net::TcpStream::connect((ip, port)).is_ok()
}

/// Strings from str slices.
pub fn s(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}
