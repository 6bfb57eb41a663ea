//! Paths to remove when the process is interrupted or terminated: scratch copies of the PKI store hold
//! CA and service-account keys, and must not outlive the run that made them, whatever ends it.
//!
//! [`register`]ed paths are removed by [`exit`], which the signal handling calls instead of
//! `std::process::exit` (destructors do not run on `exit`), and by their owners when they are dropped.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
    let paths = std::mem::take(&mut *PATHS.lock().unwrap_or_else(|e| e.into_inner()));
    for p in paths {
        let _ = std::fs::remove_dir_all(&p);
    }
}

/// Removes every registered path, then exits with `code`.
pub fn exit(code: i32) -> ! {
    run();
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    #[test]
    fn registered_paths_are_removed_and_unregistered_ones_kept() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("ca.key"), "secret").unwrap();
        super::register(a.path());
        super::register(b.path());
        super::unregister(b.path());
        super::run();
        assert!(!a.path().exists() && b.path().exists());
    }
}
