//! The process's one interrupt policy, and the paths to remove whatever ends the process.
//!
//! [`install`] (called first in `main`) handles SIGINT and SIGTERM in one thread of its own:
//! - SIGINT while the command only reads (a dry run, `status`, `check`, a plan, a prompt): stop at once,
//!   exit 130;
//! - SIGINT once a command writes ([`writing`]): the [`stopped`] flag is raised, every executor stops each
//!   host before its next step, and cleanup (rollback, uncordon, putting data back) runs on a
//!   [`crate::exec::Executor::for_cleanup`] executor that the flag does not stop; a second SIGINT exits 130;
//! - SIGTERM: exit 143 at once.
//!
//! A second SIGINT says, before it exits, where each host stood: the step in progress (which may be half
//! done) or the last one it finished, as the executor and the lifecycle commands record them
//! ([`host_doing`]).
//!
//! Every exit through the policy first removes the [`register`]ed paths: scratch copies of the PKI store
//! hold CA and service-account keys and must not outlive the run that made them (`std::process::exit` runs
//! no destructor). The programs kubeforge starts keep the default signal handling (a handler is not
//! inherited across exec; a blocked mask would be, and left QEMU deaf to SIGTERM).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

static WRITING: AtomicBool = AtomicBool::new(false);
static FORWARD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// From now on SIGINT and SIGTERM go to the process `pid` (a command this one only wraps, such as
/// `lab exec`'s), which decides what to do; this process ends when it ends.
pub fn forward_to(pid: u32) {
    FORWARD.store(pid as i32, Ordering::SeqCst);
}
static STOPPED: AtomicBool = AtomicBool::new(false);
static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

/// From now on the command changes things: a first Ctrl-C lets the steps in progress finish.
pub fn writing() {
    WRITING.store(true, Ordering::SeqCst);
}

/// Whether an interrupt asked the command to stop (checked by every executor between steps).
pub fn stopped() -> bool {
    STOPPED.load(Ordering::SeqCst)
}

/// What a signal does, by the policy above: `None` to go on, `Some(code)` to exit with it.
pub fn on_signal(sigterm: bool) -> Option<i32> {
    if sigterm {
        return Some(143);
    }
    let n = INTERRUPTS.fetch_add(1, Ordering::SeqCst) + 1;
    if !WRITING.load(Ordering::SeqCst) || n > 1 {
        return Some(130);
    }
    STOPPED.store(true, Ordering::SeqCst);
    None
}

/// The write end of the pipe the signal handler writes each signal's number to (-1: not installed).
static PIPE_W: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

#[allow(unsafe_code)]
extern "C" fn on_signal_handler(sig: nix::libc::c_int) {
    let fd = PIPE_W.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; the pipe stays open for the life of the process.
        unsafe {
            nix::libc::write(fd, (&b as *const u8).cast(), 1);
        }
    }
}

/// Handles SIGINT and SIGTERM in a thread of its own: a handler writes each signal to a pipe (the only thing
/// it does), the thread applies the policy. Handlers, unlike a signal mask, are not inherited by the
/// programs kubeforge starts (QEMU, ssh, ip): they keep the default signal handling. Call it first in
/// `main`.
#[allow(unsafe_code)]
pub fn install() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    use std::io::Read;
    use std::os::fd::IntoRawFd;
    let Ok((r, w)) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) else { return };
    PIPE_W.store(w.into_raw_fd(), Ordering::SeqCst);
    let action = SigAction::new(SigHandler::Handler(on_signal_handler), SaFlags::SA_RESTART, SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only calls write(2), which is async-signal-safe.
        let _ = unsafe { sigaction(sig, &action) };
    }
    std::thread::spawn(move || {
        let mut pipe = std::fs::File::from(r);
        let mut b = [0u8; 1];
        loop {
            match pipe.read(&mut b) {
                Ok(1) => {}
                Ok(_) => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
            let sig =
                if i32::from(b[0]) == Signal::SIGTERM as i32 { Signal::SIGTERM } else { Signal::SIGINT };
            let child = FORWARD.load(Ordering::SeqCst);
            if child > 0 {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), sig);
                continue;
            }
            match on_signal(sig == Signal::SIGTERM) {
                Some(code) => {
                    let writing = WRITING.load(Ordering::SeqCst);
                    eprintln!(
                        "{}: stopping now{}",
                        if code == 143 { "terminated" } else { "interrupted" },
                        if writing { "; a re-run continues from where each host stands" } else { "" }
                    );
                    let states = host_states();
                    if writing && !states.is_empty() {
                        eprint!("where each host stood:\n{states}");
                    }
                    exit(code)
                }
                None => eprintln!(
                    "interrupt: finishing the steps in progress and their cleanup, then stopping (Ctrl-C again to abort)"
                ),
            }
        }
    });
}

/// Where each host stands, for a second Ctrl-C: host → what it is doing or last did.
static HOSTS: Mutex<std::collections::BTreeMap<String, String>> =
    Mutex::new(std::collections::BTreeMap::new());

/// Records where `host` stands (`in `nodes`, step 3/7 `restart units``, `cordoned`).
pub fn host_doing(host: &str, what: String) {
    HOSTS.lock().unwrap_or_else(|e| e.into_inner()).insert(host.to_owned(), what);
}

/// Where each host stood when the command was stopped, a line per host (empty when nothing was recorded).
pub fn host_states() -> String {
    HOSTS.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(h, w)| format!("  {h}: {w}\n")).collect()
}

static PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes `path` (recursively) if the process is interrupted before it is [`unregister`]ed.
pub fn register(path: &Path) {
    PATHS.lock().unwrap_or_else(|e| e.into_inner()).push(path.to_path_buf());
}

/// Forgets `path` (its owner removes it).
pub fn unregister(path: &Path) {
    PATHS.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| p != path);
}

/// Removes every registered path now.
pub fn run() {
    run_where(|_| true);
}

static EXITING: AtomicBool = AtomicBool::new(false);

/// Whether the process is exiting through [`exit`]: whatever copies files into a registered path stops.
pub fn exiting() -> bool {
    EXITING.load(Ordering::SeqCst)
}

/// When the process is exiting through [`exit`] (a signal), waits for that exit, whose code stands: the
/// command's own ending (an error from a copy the exit stopped) must not race it. Returns otherwise.
pub fn wait_if_exiting() {
    while exiting() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Removes (and forgets) the registered paths `which` selects. Another thread may still be writing into
/// one (a scratch copy in progress, stopped by [`exiting`] within a file): each removal is retried until
/// the path is gone, for up to a second.
fn run_where(which: impl Fn(&Path) -> bool) {
    let paths: Vec<PathBuf> = {
        let mut all = PATHS.lock().unwrap_or_else(|e| e.into_inner());
        let (chosen, kept) = std::mem::take(&mut *all).into_iter().partition(|p| which(p));
        *all = kept;
        chosen
    };
    for p in paths {
        for _ in 0..100 {
            let _ = std::fs::remove_dir_all(&p);
            if !p.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// Removes every registered path, then exits with `code`.
pub fn exit(code: i32) -> ! {
    EXITING.store(true, Ordering::SeqCst);
    run();
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_host_is_reported_where_it_last_stood() {
        super::host_doing("zz-test-b", "in `nodes`, step 2/5 `restart units` (may be half done)".into());
        super::host_doing("zz-test-a", "cordoned".into());
        super::host_doing("zz-test-a", "finished step 5/5 of `nodes`".into());
        let s = super::host_states();
        assert!(
            s.contains("  zz-test-a: finished step 5/5 of `nodes`\n  zz-test-b: in `nodes`, step 2/5 `restart units` (may be half done)\n"),
            "{s}"
        );
    }

    #[test]
    fn registered_paths_are_removed_and_unregistered_ones_kept() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("ca.key"), "secret").unwrap();
        super::register(a.path());
        super::register(b.path());
        super::unregister(b.path());
        // Only this test's paths: other tests of the process have scratch copies registered meanwhile.
        super::run_where(|p| p == a.path() || p == b.path());
        assert!(!a.path().exists() && b.path().exists());
    }
}
