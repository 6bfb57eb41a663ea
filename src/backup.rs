//! etcd snapshots taken on a member over TLS and kept on the admin machine under `pki/<cluster>/backups/`.
//!
//! `upgrade apply` takes one before it changes anything. The snapshot is written by `etcdctl snapshot save`
//! against the member's own client endpoint (mutual TLS with the etcd CA), checked on the host with
//! `etcdutl snapshot status` (or `etcdctl snapshot status` where etcdutl is absent, etcd 3.4), copied to
//! the admin machine, checked again there by sha256, and removed from the host.

use crate::artifacts::Progress;
use crate::model::ClusterModel;
use crate::transport::{ByteProgress, Command, Transport};
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

/// What [`SAVE`] reports of the snapshot on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Saved {
    revision: u64,
    total_keys: u64,
    /// `totalSize` of the status: the file's size, for the copy's progress bar.
    size: Option<u64>,
    sha256: String,
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

/// Parses the output of [`SAVE`].
fn parse_save(out: &str) -> Option<Saved> {
    let mut status = None;
    let mut sha = None;
    for line in out.lines() {
        if let Some(h) = line.strip_prefix("sha256 ") {
            sha = Some(h.trim().to_owned());
        } else if line.trim_start().starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
            status = Some((v["revision"].as_u64()?, v["totalKey"].as_u64()?, v["totalSize"].as_u64()));
        }
    }
    let (revision, total_keys, size) = status?;
    Some(Saved { revision, total_keys, size, sha256: sha? })
}

/// The directory snapshots of `cluster` go to.
pub fn local_dir(pki_root: &Path, cluster: &str) -> PathBuf {
    pki_root.join(cluster).join("backups")
}

/// Takes a snapshot on `member` (an etcd member of `model`) and copies it to
/// `pki/<cluster>/backups/etcd-<cluster>-<UTC time>-<reason>.db` (0600, directory 0700). The copy is shown
/// on `progress` (a bar of the bytes received on a terminal, a line otherwise).
pub async fn snapshot(
    model: &ClusterModel,
    member: &str,
    t: &dyn Transport,
    pki_root: &Path,
    reason: &str,
    progress: &dyn Progress,
) -> Result<Snapshot> {
    let now = time::OffsetDateTime::now_utc();
    let stamp = now
        .format(time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"))
        .expect("static format");
    let name = format!("etcd-{}-{stamp}-{reason}.db", model.name);
    let cmd =
        Command::shell(format!("{}\n{SAVE}", crate::phase::install::ETCDCTL_FN)).arg(name.clone()).sudo();
    let remote = format!("{REMOTE_DIR}/{name}");
    let out = match crate::plan::run_checked(t, "etcd snapshot", &cmd).await {
        Ok(out) => out,
        Err(e) => {
            // A snapshot cut short still holds Secrets: it does not stay on the host.
            let _ = t.exec(&Command::new("rm").args(["-f", "--", &remote]).sudo()).await;
            return Err(Error::msg(format!("{member}: the etcd snapshot failed: {e}"), None));
        }
    };
    let Some(saved) = parse_save(&out.stdout_str()) else {
        let _ = t.exec(&Command::new("rm").args(["-f", "--", &remote]).sudo()).await;
        return Err(Error::msg(
            format!("{member}: the etcd snapshot could not be checked: {}", out.stdout_str().trim()),
            Some("`etcdutl snapshot status` (or `etcdctl snapshot status`) must read the file"),
        ));
    };
    let sha = saved.sha256.clone();
    let bar = std::sync::Arc::new(std::sync::Mutex::new((
        progress.begin(&format!("{member}:{remote}"), saved.size, 0),
        0u64,
    )));
    let hook: ByteProgress = {
        let bar = bar.clone();
        std::sync::Arc::new(move |total: u64| {
            let mut b = bar.lock().unwrap_or_else(|e| e.into_inner());
            let step = total.saturating_sub(b.1);
            b.1 = total;
            b.0.advance(step);
        })
    };
    let dir = local_dir(pki_root, &model.name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    set_mode(&dir, 0o700)?;
    let path = dir.join(&name);
    let part = dir.join(format!("{name}.part"));
    // Streamed to disk as it arrives (memory stays flat whatever the snapshot's size), checked, renamed.
    let copied = t.download(&remote, true, &part, Some(hook)).await;
    bar.lock().unwrap_or_else(|e| e.into_inner()).0.finish();
    // The snapshot on the host holds every Secret: it goes on every path, a failed copy included.
    let _ = t.exec(&Command::new("rm").args(["-f", "--", &remote]).sudo()).await;
    let (bytes, got) =
        copied.map_err(|e| Error::msg(format!("{member}: copying the etcd snapshot: {e}"), None))?;
    if got != sha {
        let _ = std::fs::remove_file(&part);
        return Err(Error::msg(
            format!("{member}: the etcd snapshot changed in transit (sha256 {got}, the host computed {sha})"),
            Some("run the command again"),
        ));
    }
    if bytes > MAX_SNAPSHOT as u64 {
        let _ = std::fs::remove_file(&part);
        return Err(Error::msg(
            format!("{member}: the etcd snapshot is larger than etcd's 8 GiB limit"),
            None,
        ));
    }
    std::fs::rename(&part, &path).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(Snapshot {
        path,
        member: member.to_owned(),
        sha256: sha,
        bytes,
        revision: saved.revision,
        total_keys: saved.total_keys,
    })
}

/// What `kubeforge backup` writes first in its archive: what the archive holds, with the sha256 of every
/// other member, so `restore` can refuse a damaged or altered archive and name the member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always [`Manifest::KIND`].
    pub kind: String,
    /// [`Manifest::FORMAT`].
    pub format: u32,
    /// The cluster name.
    pub cluster: String,
    /// When the backup was taken (RFC 3339, UTC).
    pub created: String,
    /// The kubeforge version that wrote it.
    pub kubeforge: String,
    /// The inventory's Kubernetes version at the backup.
    pub kubernetes_version: String,
    /// The component versions installed per host (from the cluster state).
    pub versions: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// The etcd snapshot.
    pub etcd: ManifestSnapshot,
    /// Every other member of the archive.
    pub files: Vec<ManifestFile>,
}

/// The etcd snapshot in a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestSnapshot {
    /// The member it was taken on.
    pub member: String,
    /// etcd revision at the snapshot.
    pub revision: u64,
    /// Number of keys.
    pub total_keys: u64,
}

/// One archive member in a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path inside the archive.
    pub path: String,
    /// Hex sha256.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Unix mode bits.
    pub mode: u32,
}

impl Manifest {
    /// The `kind` of a kubeforge backup manifest.
    pub const KIND: &'static str = "kubeforge-backup";
    /// The archive format this version writes and reads.
    pub const FORMAT: u32 = 1;
    /// The manifest's name in the archive.
    pub const NAME: &'static str = "manifest.json";
    /// The snapshot's name in the archive.
    pub const SNAPSHOT: &'static str = "etcd/snapshot.db";
    /// The inventory's name in the archive.
    pub const INVENTORY: &'static str = "inventory.yaml";
    /// The PKI directory (`pki/<cluster>/`, without its backups) in the archive.
    pub const PKI: &'static str = "pki";
}

/// The first bytes of an age-encrypted file.
const AGE_MAGIC: &[u8] = b"age-encryption.org/v1";
/// The largest archive member `restore` accepts (the snapshot's limit); the archive as a whole may hold
/// this plus the PKI.
const MAX_MEMBER: u64 = MAX_SNAPSHOT as u64;

/// The files of a PKI store that go into a backup: everything under `pki/<cluster>/` except the snapshots
/// and archives in `backups/` and unfinished `*.part` files. Paths relative to the store, sorted.
pub fn pki_files(store: &Path) -> Result<Vec<PathBuf>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let path = e.path();
            let rel = path.strip_prefix(root).expect("under root").to_path_buf();
            let ty = e.file_type()?;
            if ty.is_dir() {
                if rel != Path::new("backups") {
                    walk(root, &path, out)?;
                }
            } else if ty.is_file() && !rel.to_string_lossy().ends_with(".part") {
                out.push(rel);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(store, store, &mut out).map_err(|e| Error::io(format!("reading {}", store.display()), e))?;
    out.sort();
    Ok(out)
}

/// Writes a backup archive to `out` (0600, through `out.part` and a rename): the manifest, the snapshot, the
/// PKI store and the inventory, as a gzip'd tar, encrypted with age (scrypt passphrase) when `passphrase`
/// is given. Returns the manifest.
#[allow(clippy::too_many_arguments)]
pub fn write_archive(
    out: &Path,
    cluster: &str,
    kubernetes_version: &str,
    versions: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    snapshot: &Snapshot,
    store: &Path,
    inventory: &[u8],
    passphrase: Option<&str>,
) -> Result<Manifest> {
    use std::os::unix::fs::PermissionsExt;
    let mut members: Vec<(String, PathBuf, u32)> =
        vec![(Manifest::SNAPSHOT.to_owned(), snapshot.path.clone(), 0o600)];
    for rel in pki_files(store)? {
        let path = store.join(&rel);
        let mode = std::fs::metadata(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
            .permissions()
            .mode()
            & 0o777;
        members.push((format!("{}/{}", Manifest::PKI, rel.to_string_lossy()), path, mode));
    }
    let mut files = Vec::new();
    for (name, path, mode) in &members {
        let (sha256, bytes) = file_digest(path)?;
        files.push(ManifestFile { path: name.clone(), sha256, bytes, mode: *mode });
    }
    files.push(ManifestFile {
        path: Manifest::INVENTORY.to_owned(),
        sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(inventory)),
        bytes: inventory.len() as u64,
        mode: 0o600,
    });
    let manifest = Manifest {
        kind: Manifest::KIND.to_owned(),
        format: Manifest::FORMAT,
        cluster: cluster.to_owned(),
        created: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .expect("formats"),
        kubeforge: env!("CARGO_PKG_VERSION").to_owned(),
        kubernetes_version: kubernetes_version.to_owned(),
        versions,
        etcd: ManifestSnapshot {
            member: snapshot.member.clone(),
            revision: snapshot.revision,
            total_keys: snapshot.total_keys,
        },
        files,
    };
    let part = out.with_file_name(format!(
        "{}.part",
        out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let io = |e: std::io::Error| Error::io(format!("writing {}", part.display()), e);
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&part)
            .map_err(io)?
    };
    let sink: Box<dyn std::io::Write> = match passphrase {
        Some(p) => {
            let enc = age::Encryptor::with_user_passphrase(age::secrecy::SecretString::from(p.to_owned()));
            Box::new(AgeSink(Some(enc.wrap_output(std::io::BufWriter::new(file)).map_err(io)?)))
        }
        None => Box::new(std::io::BufWriter::new(file)),
    };
    let gz = flate2::write::GzEncoder::new(sink, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut json = serde_json::to_vec_pretty(&manifest).expect("manifests serialize");
    json.push(b'\n');
    append(&mut tar, Manifest::NAME, 0o600, &mut json.as_slice(), json.len() as u64).map_err(io)?;
    for (name, path, mode) in &members {
        let f = std::fs::File::open(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let len = f.metadata().map_err(io)?.len();
        append(&mut tar, name, *mode, &mut std::io::BufReader::new(f), len).map_err(io)?;
    }
    append(&mut tar, Manifest::INVENTORY, 0o600, &mut &inventory[..], inventory.len() as u64).map_err(io)?;
    let gz = tar.into_inner().map_err(io)?;
    let mut sink = gz.finish().map_err(io)?;
    sink.flush().map_err(io)?;
    drop(sink);
    let f = std::fs::File::open(&part).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&part, out).map_err(|e| Error::io(format!("writing {}", out.display()), e))?;
    Ok(manifest)
}

use std::io::Write as _;

/// An age stream that is finished (its last chunk written) on flush.
struct AgeSink<W: std::io::Write>(Option<age::stream::StreamWriter<W>>);

impl<W: std::io::Write> std::io::Write for AgeSink<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.0 {
            Some(w) => w.write(buf),
            None => Err(std::io::Error::other("the encrypted stream is already finished")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        // The archive is complete when the gzip stream is finished, which is the only flush it gets.
        if let Some(w) = self.0.take() {
            let mut inner = w.finish()?;
            inner.flush()?;
        }
        Ok(())
    }
}

fn append<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    mode: u32,
    data: &mut dyn std::io::Read,
    len: u64,
) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(len);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, name, data.take(len))
}

use std::io::Read as _;

fn file_digest(path: &Path) -> Result<(String, u64)> {
    let io = |e| Error::io(format!("reading {}", path.display()), e);
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(io)?;
        if k == 0 {
            break;
        }
        n += k as u64;
        sha2::Digest::update(&mut h, &buf[..k]);
    }
    Ok((hex::encode(sha2::Digest::finalize(h)), n))
}

/// A backup archive unpacked into a private directory (inside the PKI directory: it holds every key) and
/// checked against its manifest. The directory goes when this is dropped, and however the process ends.
pub struct Opened {
    /// The manifest.
    pub manifest: Manifest,
    /// Where the members are (mode 0700); removed when dropped.
    pub dir: tempfile::TempDir,
    /// Whether the archive was encrypted.
    pub encrypted: bool,
}

impl Drop for Opened {
    fn drop(&mut self) {
        crate::cleanup::unregister(self.dir.path());
    }
}

impl Opened {
    /// A member's path on disk.
    pub fn path(&self, member: &str) -> PathBuf {
        self.dir.path().join(member)
    }
}

/// Opens and checks a backup archive: decrypts it (age) with `passphrase` when it is encrypted, unpacks
/// every member into a private temporary directory and refuses the archive when a member is missing,
/// differs from its sha256 in the manifest, is not in the manifest, or is not a plain relative file,
/// naming the member.
pub fn open_archive(path: &Path, passphrase: Option<&str>, within: &Path) -> Result<Opened> {
    let io = |e: std::io::Error| Error::io(format!("reading {}", path.display()), e);
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    let head = std::io::BufRead::fill_buf(&mut file).map_err(io)?.to_vec();
    let encrypted = head.starts_with(AGE_MAGIC);
    let plain: Box<dyn std::io::Read> = if encrypted {
        let Some(p) = passphrase else {
            return Err(Error::msg(
                format!("{} is encrypted (age, passphrase)", path.display()),
                Some("name the environment variable holding its passphrase: `--passphrase-env VAR`"),
            ));
        };
        let d = age::Decryptor::new_buffered(file)
            .map_err(|e| Error::msg(format!("{}: not a readable age file: {e}", path.display()), None))?;
        let id = age::scrypt::Identity::new(age::secrecy::SecretString::from(p.to_owned()));
        let r = d.decrypt(std::iter::once(&id as &dyn age::Identity)).map_err(|e| {
            Error::msg(
                format!("{}: cannot decrypt: {e}", path.display()),
                Some("check the passphrase in the variable `--passphrase-env` names"),
            )
        })?;
        Box::new(r)
    } else {
        Box::new(file)
    };
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(within)
        .map_err(|e| Error::io(format!("creating {}", within.display()), e))?;
    let dir = tempfile::Builder::new()
        .prefix(".restore-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(within)
        .map_err(|e| Error::io(format!("creating a private directory in {}", within.display()), e))?;
    crate::cleanup::register(dir.path());
    let mut seen: std::collections::BTreeMap<String, (String, u64)> = Default::default();
    let bad = |what: String| {
        Error::msg(
            format!("{}: {what}", path.display()),
            Some("the archive is damaged or was altered; use another copy of the backup"),
        )
    };
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(plain));
    for entry in tar.entries().map_err(|e| bad(format!("not a kubeforge backup archive ({e})")))? {
        let mut entry = entry.map_err(|e| bad(format!("unreadable archive ({e})")))?;
        let name = entry.path().map_err(|e| bad(format!("unreadable member name ({e})")))?.into_owned();
        let shown = name.to_string_lossy().into_owned();
        if !matches!(entry.header().entry_type(), tar::EntryType::Regular)
            || name.is_absolute()
            || name.components().any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(bad(format!(
                "member `{}` is not a plain relative file",
                crate::inventory::shown(&shown)
            )));
        }
        if entry.size() > MAX_MEMBER {
            return Err(bad(format!("member `{shown}` is larger than {MAX_MEMBER} bytes")));
        }
        if seen.contains_key(&shown) {
            return Err(bad(format!("member `{shown}` appears twice")));
        }
        let dest = dir.path().join(&name);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io("unpacking the archive", e))?;
        }
        let mut out = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&dest)
                .map_err(|e| Error::io("unpacking the archive", e))?
        };
        let mut h = <sha2::Sha256 as sha2::Digest>::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0u64;
        loop {
            let k = entry.read(&mut buf).map_err(|e| bad(format!("member `{shown}` is unreadable ({e})")))?;
            if k == 0 {
                break;
            }
            n += k as u64;
            sha2::Digest::update(&mut h, &buf[..k]);
            out.write_all(&buf[..k]).map_err(|e| Error::io("unpacking the archive", e))?;
        }
        seen.insert(shown, (hex::encode(sha2::Digest::finalize(h)), n));
    }
    if !seen.contains_key(Manifest::NAME) {
        return Err(bad(format!("no {} in the archive: not a kubeforge backup", Manifest::NAME)));
    }
    let text =
        std::fs::read(dir.path().join(Manifest::NAME)).map_err(|e| Error::io("reading the manifest", e))?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| bad(format!("{} is not a backup manifest ({e})", Manifest::NAME)))?;
    if manifest.kind != Manifest::KIND {
        return Err(bad(format!(
            "{} is of kind `{}`, not {}",
            Manifest::NAME,
            manifest.kind,
            Manifest::KIND
        )));
    }
    if manifest.format != Manifest::FORMAT {
        return Err(Error::msg(
            format!(
                "{}: backup format {} (this kubeforge reads format {})",
                path.display(),
                manifest.format,
                Manifest::FORMAT
            ),
            Some("restore it with the kubeforge version that wrote it"),
        ));
    }
    let mut problems = Vec::new();
    for f in &manifest.files {
        match seen.get(&f.path) {
            None => problems.push(format!("member `{}` is missing", f.path)),
            Some((sha, n)) if *sha != f.sha256 || *n != f.bytes => problems.push(format!(
                "member `{}` does not match the manifest (sha256 {}…, {n} bytes; the manifest says {}…, {} bytes)",
                f.path,
                &sha[..12],
                f.sha256.get(..12).unwrap_or(&f.sha256),
                f.bytes
            )),
            Some(_) => {}
        }
    }
    for name in seen.keys().filter(|n| *n != Manifest::NAME) {
        if !manifest.files.iter().any(|f| f.path == *name) {
            problems.push(format!("member `{}` is not in the manifest", crate::inventory::shown(name)));
        }
    }
    for required in [Manifest::SNAPSHOT, Manifest::INVENTORY] {
        if !manifest.files.iter().any(|f| f.path == required) {
            problems.push(format!("the manifest lists no `{required}`"));
        }
    }
    if !problems.is_empty() {
        return Err(bad(format!("refused:\n  {}", problems.join("\n  "))));
    }
    Ok(Opened { manifest, dir, encrypted })
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("setting the mode of {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::Silent;
    use crate::transport::fake::{FakeTransport, Reply, FAKE_CHUNK};

    #[test]
    fn save_output_is_parsed_for_revision_keys_and_digest() {
        let out =
            "{\"hash\":3835145434,\"revision\":1042,\"totalKey\":311,\"totalSize\":2101248}\nsha256 ab12\n";
        let want = Saved { revision: 1042, total_keys: 311, size: Some(2101248), sha256: "ab12".into() };
        assert_eq!(parse_save(out), Some(want));
        assert_eq!(parse_save("sha256 ab12\n"), None, "no status line: not checked");
        assert_eq!(parse_save("{\"revision\":1,\"totalKey\":1}\n"), None, "no digest");
        // etcd 3.4's `etcdctl snapshot status` has the size too; without it the bar has no total.
        let s = parse_save("{\"revision\":1,\"totalKey\":1}\nsha256 ab\n");
        assert_eq!(s, Some(Saved { revision: 1, total_keys: 1, size: None, sha256: "ab".into() }));
    }

    /// Records every transfer's begin, advances and finish.
    #[derive(Default)]
    struct Recorded(std::sync::Arc<std::sync::Mutex<Vec<String>>>);
    struct RecordedBar(std::sync::Arc<std::sync::Mutex<Vec<String>>>);
    impl crate::artifacts::progress::Bar for RecordedBar {
        fn advance(&mut self, n: u64) {
            self.0.lock().unwrap().push(format!("+{n}"));
        }
        fn finish(&mut self) {
            self.0.lock().unwrap().push("finish".into());
        }
    }
    impl Progress for Recorded {
        fn begin(
            &self,
            url: &str,
            total: Option<u64>,
            done: u64,
        ) -> Box<dyn crate::artifacts::progress::Bar> {
            self.0.lock().unwrap().push(format!("begin {url} {total:?} {done}"));
            Box::new(RecordedBar(self.0.clone()))
        }
        fn message(&self, line: &str) {
            self.0.lock().unwrap().push(line.into());
        }
    }

    #[tokio::test]
    async fn a_snapshot_is_copied_checked_and_private() {
        let inv = "cluster: {name: c1, kubernetesVersion: v1.35.7}\nhosts:\n- {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}\n";
        let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), inv).unwrap());
        // Two and a half chunks of the fake transport: the bar hears three advances.
        let data: Vec<u8> = (0..FAKE_CHUNK * 5 / 2).map(|i| (i % 251) as u8).collect();
        let n = data.len();
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
        let t = FakeTransport::new("cp1");
        let status =
            format!("{{\"hash\":1,\"revision\":7,\"totalKey\":3,\"totalSize\":{n}}}\nsha256 {sha}\n");
        let (d, st) = (data.clone(), status.clone());
        t.handle("snapshot save", move |argv, fake| {
            fake.put_file(format!("{REMOTE_DIR}/{}", argv.last().unwrap()), d.clone());
            Reply::ok(st.clone())
        });
        t.on("rm -f -- /var/lib/kubeforge/backups/", Reply::ok(""));
        let dir = tempfile::tempdir().unwrap();
        let seen = Recorded::default();
        let s = snapshot(&model, "cp1", &t, dir.path(), "upgrade", &seen).await.unwrap();
        assert_eq!((s.revision, s.total_keys, s.bytes), (7, 3, n as u64));
        let name = s.path.file_name().unwrap().to_string_lossy().into_owned();
        let half = (FAKE_CHUNK / 2).to_string();
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                format!("begin cp1:{REMOTE_DIR}/{name} Some({n}) 0"),
                format!("+{FAKE_CHUNK}"),
                format!("+{FAKE_CHUNK}"),
                format!("+{half}"),
                "finish".into()
            ],
            "one bar from 0 to the size etcd reported, closed at the end"
        );
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
        t.on("rm -f -- /var/lib/kubeforge/backups/", Reply::ok(""));
        let dir = tempfile::tempdir().unwrap();
        let e = snapshot(&model, "cp1", &t, dir.path(), "upgrade", &Silent).await.unwrap_err().to_string();
        assert!(e.contains("changed in transit"), "{e}");
        let kept: Vec<_> =
            std::fs::read_dir(local_dir(dir.path(), "c1")).map(|d| d.collect()).unwrap_or_default();
        assert!(kept.is_empty(), "{kept:?}");
        let removed = |t: &FakeTransport| {
            t.commands().iter().any(|c| c.contains("rm -f -- /var/lib/kubeforge/backups/etcd-c1-"))
        };
        assert!(removed(&t), "the snapshot left the host: {:?}", t.commands());

        // A copy that fails (the file vanished) and a save that fails: the host keeps no snapshot either.
        let t = FakeTransport::new("cp1");
        let st = format!("{{\"hash\":1,\"revision\":7,\"totalKey\":3,\"totalSize\":{n}}}\nsha256 {sha}\n");
        t.on("snapshot save", Reply::ok(st));
        t.on("rm -f -- /var/lib/kubeforge/backups/", Reply::ok(""));
        let e = snapshot(&model, "cp1", &t, dir.path(), "upgrade", &Silent).await.unwrap_err().to_string();
        assert!(e.contains("copying the etcd snapshot"), "{e}");
        assert!(removed(&t), "{:?}", t.commands());
        let t = FakeTransport::new("cp1");
        t.on("snapshot save", Reply::fail(1, "etcdserver: request timed out"));
        t.on("rm -f -- /var/lib/kubeforge/backups/", Reply::ok(""));
        assert!(snapshot(&model, "cp1", &t, dir.path(), "upgrade", &Silent).await.is_err());
        assert!(removed(&t), "{:?}", t.commands());
    }

    /// A PKI store, a snapshot file and an inventory in a temporary directory.
    fn material() -> (tempfile::TempDir, Snapshot, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("pki/c1");
        for (f, mode) in [("ca.crt", 0o644), ("ca.key", 0o600), ("etcd/ca.key", 0o600), ("state.json", 0o600)]
        {
            let p = store.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, format!("content of {f}")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::create_dir_all(store.join("backups")).unwrap();
        std::fs::write(store.join("backups/old.db"), b"an older snapshot").unwrap();
        std::fs::write(store.join("ca.crt.part"), b"half written").unwrap();
        let snap = dir.path().join("snap.db");
        std::fs::write(&snap, vec![7u8; 100_000]).unwrap();
        let s = Snapshot {
            path: snap,
            member: "cp1".into(),
            sha256: String::new(),
            bytes: 100_000,
            revision: 42,
            total_keys: 9,
        };
        (dir, s, store)
    }

    fn write(dir: &Path, s: &Snapshot, store: &Path, pass: Option<&str>) -> PathBuf {
        let out = dir.join("c1.backup.tar.gz");
        let v = [("cp1".to_string(), [("etcd".to_string(), "v3.5.1".to_string())].into())].into();
        write_archive(&out, "c1", "v1.35.7", v, s, store, b"cluster: {name: c1}\n", pass).unwrap();
        out
    }

    #[test]
    fn an_archive_holds_manifest_snapshot_pki_and_inventory_and_opens_checked() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, s, store) = material();
        let out = write(dir.path(), &s, &store, None);
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!out.with_file_name("c1.backup.tar.gz.part").exists());
        let o = open_archive(&out, None, &std::env::temp_dir()).unwrap();
        assert!(!o.encrypted);
        let m = &o.manifest;
        assert_eq!(
            (m.cluster.as_str(), m.kubernetes_version.as_str(), m.etcd.revision),
            ("c1", "v1.35.7", 42)
        );
        assert_eq!(m.versions["cp1"]["etcd"], "v3.5.1");
        let names: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "etcd/snapshot.db",
                "pki/ca.crt",
                "pki/ca.key",
                "pki/etcd/ca.key",
                "pki/state.json",
                "inventory.yaml"
            ],
            "the store's backups/ and *.part files stay out"
        );
        assert_eq!(m.files.iter().find(|f| f.path == "pki/ca.key").unwrap().mode, 0o600);
        assert_eq!(m.files.iter().find(|f| f.path == "pki/ca.crt").unwrap().mode, 0o644);
        assert_eq!(std::fs::read(o.path("etcd/snapshot.db")).unwrap(), vec![7u8; 100_000]);
        assert_eq!(std::fs::read(o.path("pki/etcd/ca.key")).unwrap(), b"content of etcd/ca.key");
        assert_eq!(std::fs::read(o.path("inventory.yaml")).unwrap(), b"cluster: {name: c1}\n");
        assert_eq!(std::fs::metadata(o.dir.path()).unwrap().permissions().mode() & 0o777, 0o700);
    }

    /// Rewrites an archive with one member changed by `edit` (name, data) -> (name, data), or dropped (None),
    /// keeping the manifest as it was.
    fn tamper(src: &Path, dst: &Path, edit: impl Fn(&str, Vec<u8>) -> Option<(String, Vec<u8>)>) {
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(src).unwrap()));
        let gz =
            flate2::write::GzEncoder::new(std::fs::File::create(dst).unwrap(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            if let Some((name, data)) = edit(&name, data) {
                // The name is written raw: the tar crate itself refuses to write `..`.
                let mut h = tar::Header::new_old();
                h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
                h.set_size(data.len() as u64);
                h.set_mode(0o600);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_cksum();
                b.append(&h, &data[..]).unwrap();
            }
        }
        b.into_inner().unwrap().finish().unwrap();
    }

    type Edit = dyn Fn(&str, Vec<u8>) -> Option<(String, Vec<u8>)>;

    #[test]
    fn a_damaged_or_altered_archive_is_refused_naming_the_member() {
        let (dir, s, store) = material();
        let out = write(dir.path(), &s, &store, None);
        let bad = dir.path().join("bad.tar.gz");
        let cases: Vec<(&str, Box<Edit>, &str)> = vec![
            (
                "a changed key",
                Box::new(|n, d| Some((n.into(), if n == "pki/ca.key" { b"forged".to_vec() } else { d }))),
                "member `pki/ca.key` does not match the manifest",
            ),
            (
                "a missing snapshot",
                Box::new(|n, d| (n != "etcd/snapshot.db").then(|| (n.into(), d))),
                "member `etcd/snapshot.db` is missing",
            ),
            (
                "an extra member",
                Box::new(|n, d| {
                    Some((if n == "inventory.yaml" { "pki/extra.key".into() } else { n.into() }, d))
                }),
                "member `pki/extra.key` is not in the manifest",
            ),
        ];
        for (what, edit, want) in cases {
            tamper(&out, &bad, edit);
            let e = open_archive(&bad, None, &std::env::temp_dir()).err().unwrap().to_string();
            assert!(e.contains(want), "{what}: {e}");
        }
        // A member that would land outside the directory is refused before anything is written.
        tamper(&out, &bad, |n, d| {
            Some((if n == "inventory.yaml" { "../../escape".into() } else { n.into() }, d))
        });
        let e = open_archive(&bad, None, &std::env::temp_dir()).err().unwrap().to_string();
        assert!(e.contains("not a plain relative file") || e.contains("unreadable"), "{e}");
        assert!(!dir.path().join("escape").exists());
        // Not an archive at all.
        std::fs::write(&bad, b"hello").unwrap();
        let e = open_archive(&bad, None, &std::env::temp_dir()).err().unwrap().to_string();
        assert!(e.contains("unreadable archive") || e.contains("not a kubeforge backup"), "{e}");
    }

    #[test]
    fn an_encrypted_archive_needs_its_passphrase() {
        let (dir, s, store) = material();
        let out = write(dir.path(), &s, &store, Some("correct horse"));
        let head = std::fs::read(&out).unwrap();
        assert!(head.starts_with(b"age-encryption.org/v1"), "an age file");
        assert!(!head.windows(b"content of ca.key".len()).any(|w| w == b"content of ca.key"));
        let e = open_archive(&out, None, &std::env::temp_dir()).err().unwrap().to_string();
        assert!(e.contains("is encrypted"), "{e}");
        let e = open_archive(&out, Some("wrong"), &std::env::temp_dir()).err().unwrap().to_string();
        assert!(e.contains("cannot decrypt"), "{e}");
        let o = open_archive(&out, Some("correct horse"), &std::env::temp_dir()).unwrap();
        assert!(o.encrypted);
        assert_eq!(std::fs::read(o.path("pki/ca.key")).unwrap(), b"content of ca.key");
    }
}
