//! etcd snapshots taken on a member over TLS and kept on the admin machine under `pki/<cluster>/backups/`.
//!
//! `upgrade apply` takes one before it changes anything. The snapshot is written by `etcdctl snapshot save`
//! against the member's own client endpoint (mutual TLS with the etcd CA), checked on the host with
//! `etcdutl snapshot status` (or `etcdctl snapshot status` where etcdutl is absent, etcd 3.4), copied to
//! the admin machine, checked again there by sha256, and removed from the host.

use crate::model::ClusterModel;
use crate::transport::{Command, Transport};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where snapshots are written on the member before they are copied.
pub const REMOTE_DIR: &str = "/var/lib/kubeforge/backups";
/// The largest snapshot copied (etcd's own default quota is 2 GiB; its maximum 8 GiB).
const MAX_SNAPSHOT: usize = 8 << 30;

/// A snapshot on the admin machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The local file.
    pub path: PathBuf,
    /// The member it was taken on.
    pub member: String,
    /// Hex sha256 of the file.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
    /// etcd revision at the snapshot.
    pub revision: u64,
    /// Number of keys.
    pub total_keys: u64,
}

/// `$1` the file name. Prints the status JSON line, then `sha256 <hex>`.
const SAVE: &str = r#"set -eu
dir=/var/lib/kubeforge/backups
mkdir -p "$dir"; chmod 700 "$dir"
f="$dir/$1"; eps=https://127.0.0.1:2379
rm -f "$f.part"
e snapshot save "$f.part" >/dev/null
mv -f "$f.part" "$f"; chmod 600 "$f"
if command -v etcdutl >/dev/null 2>&1; then
  etcdutl snapshot status "$f" -w json
else
  e snapshot status "$f" -w json 2>/dev/null
fi
echo "sha256 $(sha256sum "$f" | cut -d' ' -f1)"
"#;

/// Parses the output of [`SAVE`]: (revision, total keys, sha256).
fn parse_save(out: &str) -> Option<(u64, u64, String)> {
    let mut status = None;
    let mut sha = None;
    for line in out.lines() {
        if let Some(h) = line.strip_prefix("sha256 ") {
            sha = Some(h.trim().to_owned());
        } else if line.trim_start().starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
            status = Some((v["revision"].as_u64()?, v["totalKey"].as_u64()?));
        }
    }
    let (revision, keys) = status?;
    Some((revision, keys, sha?))
}

/// The directory snapshots of `cluster` go to.
pub fn local_dir(pki_root: &Path, cluster: &str) -> PathBuf {
    pki_root.join(cluster).join("backups")
}

/// Takes a snapshot on `member` (an etcd member of `model`) and copies it to
/// `pki/<cluster>/backups/etcd-<cluster>-<UTC time>-<reason>.db` (0600, directory 0700).
pub async fn snapshot(
    model: &ClusterModel,
    member: &str,
    t: &dyn Transport,
    pki_root: &Path,
    reason: &str,
) -> Result<Snapshot> {
    let now = time::OffsetDateTime::now_utc();
    let stamp = now
        .format(time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"))
        .expect("static format");
    let name = format!("etcd-{}-{stamp}-{reason}.db", model.name);
    let cmd =
        Command::shell(format!("{}\n{SAVE}", crate::phase::install::ETCDCTL_FN)).arg(name.clone()).sudo();
    let out = crate::plan::run_checked(t, "etcd snapshot", &cmd)
        .await
        .map_err(|e| Error::msg(format!("{member}: the etcd snapshot failed: {e}"), None))?;
    let (revision, total_keys, sha) = parse_save(&out.stdout_str()).ok_or_else(|| {
        Error::msg(
            format!("{member}: the etcd snapshot could not be checked: {}", out.stdout_str().trim()),
            Some("`etcdutl snapshot status` (or `etcdctl snapshot status`) must read the file"),
        )
    })?;
    let remote = format!("{REMOTE_DIR}/{name}");
    let bytes = t
        .read_file(&remote, true, MAX_SNAPSHOT)
        .await
        .map_err(|e| Error::msg(format!("{member}: copying the etcd snapshot: {e}"), None))?;
    let got = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    if got != sha {
        return Err(Error::msg(
            format!("{member}: the etcd snapshot changed in transit (sha256 {got}, the host computed {sha})"),
            Some("run the command again"),
        ));
    }
    let dir = local_dir(pki_root, &model.name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    set_mode(&dir, 0o700)?;
    let path = dir.join(&name);
    let part = dir.join(format!("{name}.part"));
    write_private(&part, &bytes)?;
    std::fs::rename(&part, &path).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    let _ = t.exec(&Command::new("rm").args(["-f", "--", &remote]).sudo()).await;
    Ok(Snapshot {
        path,
        member: member.to_owned(),
        sha256: sha,
        bytes: bytes.len() as u64,
        revision,
        total_keys,
    })
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("setting the mode of {}", path.display()), e))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::fake::{FakeTransport, Reply};

    #[test]
    fn save_output_is_parsed_for_revision_keys_and_digest() {
        let out =
            "{\"hash\":3835145434,\"revision\":1042,\"totalKey\":311,\"totalSize\":2101248}\nsha256 ab12\n";
        assert_eq!(parse_save(out), Some((1042, 311, "ab12".into())));
        assert_eq!(parse_save("sha256 ab12\n"), None, "no status line: not checked");
        assert_eq!(parse_save("{\"revision\":1,\"totalKey\":1}\n"), None, "no digest");
    }

    #[tokio::test]
    async fn a_snapshot_is_copied_checked_and_private() {
        let inv = "cluster: {name: c1, kubernetesVersion: v1.35.7}\nhosts:\n- {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}\n";
        let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), inv).unwrap());
        let data = b"etcd-snapshot-bytes".to_vec();
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
        let t = FakeTransport::new("cp1");
        let status = format!("{{\"hash\":1,\"revision\":7,\"totalKey\":3,\"totalSize\":19}}\nsha256 {sha}\n");
        let (d, st) = (data.clone(), status.clone());
        t.handle("snapshot save", move |argv, fake| {
            fake.put_file(format!("{REMOTE_DIR}/{}", argv.last().unwrap()), d.clone());
            Reply::ok(st.clone())
        });
        t.on("rm -f -- /var/lib/kubeforge/backups/", Reply::ok(""));
        let dir = tempfile::tempdir().unwrap();
        let s = snapshot(&model, "cp1", &t, dir.path(), "upgrade").await.unwrap();
        assert_eq!((s.revision, s.total_keys, s.bytes), (7, 3, 19));
        assert_eq!(std::fs::read(&s.path).unwrap(), data);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&s.path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(s.path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(s.path.file_name().unwrap().to_string_lossy().ends_with("-upgrade.db"));

        // Bytes that differ from what the host hashed are refused and nothing is kept.
        let t = FakeTransport::new("cp1");
        t.handle("snapshot save", move |argv, fake| {
            fake.put_file(format!("{REMOTE_DIR}/{}", argv.last().unwrap()), b"corrupted".to_vec());
            Reply::ok(status.clone())
        });
        let dir = tempfile::tempdir().unwrap();
        let e = snapshot(&model, "cp1", &t, dir.path(), "upgrade").await.unwrap_err().to_string();
        assert!(e.contains("changed in transit"), "{e}");
        let kept: Vec<_> =
            std::fs::read_dir(local_dir(dir.path(), "c1")).map(|d| d.collect()).unwrap_or_default();
        assert!(kept.is_empty(), "{kept:?}");
    }
}
