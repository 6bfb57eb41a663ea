//! Local file writes that a reader never sees half done: the content goes to a temporary file beside the
//! target (same directory, so the rename is atomic), optionally forced to disk, then renamed over it. The
//! store, the cluster state and the kubeconfigs kubeforge writes for people all go through here.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replaces `path` with `data` (mode `mode` from the start, never wider): a temporary file beside it, then
/// a rename. With `durable` the file is fsynced before the rename. The directory must exist.
pub fn replace_file(path: &Path, data: &[u8], mode: u32, durable: bool) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "f".into());
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let written = (|| {
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(data)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_replaced_file_has_its_content_and_mode_and_no_temporary_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "old").unwrap();
        replace_file(&p, b"new", 0o600, true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["k"]);
        assert!(replace_file(&dir.path().join("missing/k"), b"x", 0o600, false).is_err());
    }
}
