//! The SSH engine against real OpenSSH: private `sshd` instances on 127.0.0.x (see `support/sshd.rs`),
//! the real russh transport, the real executor, and the real `kubeforge exec` / `kubeforge check`
//! binaries. Covers identity-file login, exit codes and output, sudo without and with a password,
//! a batch of small files with a follow-up command in one round trip through sudo's password prompt
//! (owners, modes, previous version kept, a checksum mismatch named with nothing replaced),
//! unknown / accepted / changed host keys (checked with OpenSSH's own `ssh` and `ssh-keygen`), a jump
//! host, command timeouts, a 200 MiB upload (sha256, mode, bounded memory, skip on re-run), sshd dying
//! mid-upload, and 50 hosts at once.
//!
//! Needs root and Debian's openssh-server (`scripts/install-test-deps.sh`); a missing prerequisite fails
//! the tests. `KUBEFORGE_SSH_TESTS=0` skips them.

#[path = "support/sshd.rs"]
mod sshd;

use kubeforge::exec::{Executor, HostPlan, Step};
use kubeforge::transport::known_hosts::HostKeyPolicy;
use kubeforge::transport::ssh::{Secret, SshTarget, SshTransport, SudoMode};
use kubeforge::transport::{Command, Transport, TransportError, Upload, UploadOutcome};
use sha2::{Digest, Sha256};
use sshd::{enabled, sh, ClientKey, Sshd, TestUser};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn target(
    name: &str,
    address: &str,
    port: u16,
    user: &str,
    key: &ClientKey,
    kh: &Path,
    accept: bool,
) -> SshTarget {
    SshTarget {
        name: name.into(),
        address: address.into(),
        port,
        user: user.into(),
        identity_files: vec![key.private()],
        agent: false,
        host_key: HostKeyPolicy::KnownHosts { path: kh.to_path_buf(), accept_new: accept },
        sudo: if user == "root" { SudoMode::Off } else { SudoMode::NoPassword },
        bastion: None,
        connect_timeout: Duration::from_secs(10),
        keepalive: Duration::from_secs(5),
    }
}

/// A real sshd with two sudo users, one with NOPASSWD and one that needs its password, a known_hosts that
/// trusts the sshd, and a directory only root can write (the sudo tests' shared set-up).
struct SudoHosts {
    key: ClientKey,
    nopw: TestUser,
    withpw: TestUser,
    s: Sshd,
    tmp: tempfile::TempDir,
    kh: PathBuf,
    root_only: PathBuf,
}

impl SudoHosts {
    fn start(nopw: &str, withpw: &str) -> Self {
        let key = ClientKey::new();
        let nopw = TestUser::create(nopw, "ALL=(ALL) NOPASSWD: ALL");
        let withpw = TestUser::create(withpw, "ALL=(ALL) ALL");
        let s = Sshd::start(&key, &["127.0.0.1"], "");
        let tmp = tempfile::tempdir().unwrap();
        sh(&format!("chmod 755 {}", tmp.path().display()));
        let kh = trusting(tmp.path(), &s);
        let root_only = tmp.path().join("root-only");
        std::fs::create_dir(&root_only).unwrap();
        SudoHosts { key, nopw, withpw, s, tmp, kh, root_only }
    }
}

/// A known_hosts file that already trusts `s` on each of its addresses.
fn trusting(dir: &Path, s: &Sshd) -> PathBuf {
    let kh = dir.join("known_hosts");
    let lines: String = s.addrs.iter().map(|a| format!("[{a}]:{} {}\n", s.port, s.host_key())).collect();
    std::fs::write(&kh, lines).unwrap();
    kh
}

/// A throwaway sshd on 127.0.0.1 for this test's key, and a scratch directory whose `known_hosts` trusts it.
fn loopback_sshd() -> (ClientKey, Sshd, tempfile::TempDir, PathBuf) {
    let key = ClientKey::new();
    let s = Sshd::start(&key, &["127.0.0.1"], "");
    let tmp = tempfile::tempdir().unwrap();
    let kh = trusting(tmp.path(), &s);
    (key, s, tmp, kh)
}

/// How far this process's peak RSS (VmHWM) rose above `before_kib`, in MiB: a streamed transfer keeps it
/// small; the other tests of this binary are small, so a growth of a quarter of the data or more means
/// buffering.
fn peak_rss_growth_mib(before_kib: u64) -> u64 {
    proc_status_kib("VmHWM").saturating_sub(before_kib) / 1024
}

async fn stdout(t: &SshTransport, c: Command) -> String {
    let out = t.exec(&c).await.unwrap();
    assert!(out.success(), "{c}: {}", out.stderr_str());
    out.stdout_str().trim().to_string()
}

/// Processes anywhere on the machine whose command line starts with `argv`.
fn running(argv: &[&str]) -> Vec<i32> {
    let want = argv.join("\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).starts_with(&want))
        })
        .collect()
}

fn silent() -> Arc<dyn kubeforge::report::Reporter> {
    Arc::new(kubeforge::report::Silent)
}

fn sha256_file(p: &Path) -> String {
    sh(&format!("sha256sum {}", p.display())).split_whitespace().next().unwrap().to_string()
}

/// A file of `mib` MiB of incompressible bytes (a xorshift stream; fast and reproducible).
fn random_file(path: &Path, mib: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
    f.flush().unwrap();
}

/// A field of `/proc/self/status`, in KiB (`VmRSS`, `VmHWM`).
fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn upload_temps(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(".kubeforge-upload."))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_an_identity_file_keeps_status_output_stdin_and_literal_arguments() {
    if !enabled() {
        return;
    }
    let (key, s, _tmp, kh) = loopback_sshd();
    let t =
        SshTransport::connect(target("node-1", "127.0.0.1", s.port, "root", &key, &kh, false)).await.unwrap();

    let out = t.exec(&Command::shell("echo out; echo err >&2; exit 7")).await.unwrap();
    assert_eq!(
        (out.status, out.stdout_str().as_str(), out.stderr_str().as_str()),
        (Some(7), "out\n", "err\n")
    );

    // Arguments reach the program literally: no expansion, splitting or quoting surprises.
    let out =
        t.exec(&Command::new("printf").arg("%s|").arg("$(id)").arg("a b").arg("it's").arg("")).await.unwrap();
    assert_eq!(out.stdout_str(), "$(id)|a b|it's||");
    let out = t.exec(&Command::shell("echo \"$FOO\"").env("FOO", "x y;$HOME")).await.unwrap();
    assert_eq!(out.stdout_str(), "x y;$HOME\n");
    assert_eq!(t.exec(&Command::new("id").arg("-un")).await.unwrap().stdout_str(), "root\n");

    // stdin streams: 3 MiB in, its sha256 out.
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let want = hex::encode(Sha256::digest(&data));
    let out = t
        .exec_io(&Command::new("sha256sum"), Some(Box::new(std::io::Cursor::new(data))), None)
        .await
        .unwrap();
    assert!(out.stdout_str().starts_with(&want), "{}", out.stdout_str());

    let st = t.stats();
    assert_eq!((st.connects, st.round_trips), (1, 5), "one connection, a channel per command");

    // A key the server does not know is an authentication error with a hint, not a hang.
    let other = ClientKey::new();
    let e = SshTransport::connect(target("node-1", "127.0.0.1", s.port, "root", &other, &kh, false))
        .await
        .err()
        .expect("a foreign key must be refused");
    assert!(matches!(e, TransportError::Auth { .. }), "{e}");
    assert!(e.to_string().starts_with("node-1: authentication as root failed (key "), "{e}");
    assert!(e.hint().unwrap().contains("ssh.identityFile"));
    t.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_root_user_gets_root_through_sudo_n_or_a_sudo_password() {
    if !enabled() {
        return;
    }
    let SudoHosts { key, nopw, withpw, s, tmp, kh, root_only } = SudoHosts::start("np", "pw");

    // Passwordless sudo: `sudo -n`.
    let t =
        SshTransport::connect(target("np", "127.0.0.1", s.port, &nopw.name, &key, &kh, false)).await.unwrap();
    assert_eq!(stdout(&t, Command::new("id").arg("-u")).await, nopw.uid().to_string());
    assert_eq!(stdout(&t, Command::new("id").arg("-u").sudo()).await, "0");
    let dest = root_only.join("sub/secret.conf");
    let up = Upload::bytes(b"k=v\n".to_vec(), dest.to_str().unwrap(), 0o600).owner("root:root");
    assert_eq!(t.upload(&up).await.unwrap(), UploadOutcome::Written);
    let m = std::fs::metadata(&dest).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777, std::fs::read(&dest).unwrap()), (0, 0o600, b"k=v\n".to_vec()));
    // Without sudo the same user really is unprivileged.
    let e = t.upload(&up.clone().with_sudo(false)).await.unwrap_err();
    assert!(matches!(e, TransportError::Remote { .. }), "{e}");

    // A user whose sudo needs a password: `sudo -n` is refused with a precise error and a hint.
    let mut pw_target = target("pw", "127.0.0.1", s.port, &withpw.name, &key, &kh, false);
    let t = SshTransport::connect(pw_target.clone()).await.unwrap();
    let e = t.exec(&Command::new("true").sudo()).await.unwrap_err();
    assert!(matches!(e, TransportError::Sudo { .. }), "{e}");
    assert!(e.to_string().contains("password"), "{e}");
    assert!(e.hint().unwrap().contains("sudoPasswordEnv"));

    // With the password (written to sudo's stdin, never on a command line).
    pw_target.sudo = SudoMode::Password(Secret::new(withpw.password.clone()));
    let t = SshTransport::connect(pw_target.clone()).await.unwrap();
    let out = t.exec(&Command::new("id").arg("-u").sudo()).await.unwrap();
    assert_eq!(out.stdout_str().trim(), "0", "{}", out.stderr_str());
    // The rest of stdin reaches the command unchanged after sudo took its password line.
    let src = tmp.path().join("payload.bin");
    random_file(&src, 2);
    let dest = root_only.join("payload.bin");
    let up = Upload::file(&src, dest.to_str().unwrap(), 0o640).unwrap();
    assert_eq!(t.upload(&up).await.unwrap(), UploadOutcome::Written);
    assert_eq!(sha256_file(&dest), up.sha256);
    assert_eq!(std::fs::metadata(&dest).unwrap().uid(), 0);
    assert_eq!(t.upload(&up).await.unwrap(), UploadOutcome::Unchanged);
    // A batch through the same sudo: every small file and a follow-up command in one round trip, owners
    // and modes as asked, the replaced file kept; a second identical batch changes nothing; a checksum
    // mismatch names its file and replaces nothing.
    let d = root_only.join("batch");
    let batch = vec![
        Upload::bytes(b"a=1\n".to_vec(), d.join("etc/a.conf").to_str().unwrap(), 0o644),
        Upload::bytes(b"key".to_vec(), d.join("pki/k.key").to_str().unwrap(), 0o600)
            .owner("root:root")
            .secret(),
        Upload::bytes(b"new\n".to_vec(), dest.to_str().unwrap(), 0o640),
    ];
    let then = Command::new("id").arg("-u").sudo();
    let before = t.stats();
    let o = t.upload_batch(&batch, Some(&then)).await.unwrap();
    assert_eq!(o.files, vec![UploadOutcome::Written; 3]);
    assert_eq!(o.then.unwrap().stdout_str(), "0\n", "the follow-up ran as root, after the files");
    let after = t.stats();
    assert_eq!(after.round_trips - before.round_trips, 1, "one round trip for three files and a command");
    assert_eq!(after.bytes_sent - before.bytes_sent, 4 + 3 + 4, "the content, as for single uploads");
    let m = std::fs::metadata(d.join("pki/k.key")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o600));
    assert_eq!(std::fs::read(&dest).unwrap(), b"new\n");
    assert_eq!(
        sha256_file(&root_only.join("payload.bin.kubeforge-prev")),
        up.sha256,
        "previous version kept"
    );
    let again = t.upload_batch(&batch, None).await.unwrap();
    assert_eq!(again.files, vec![UploadOutcome::Unchanged; 3]);
    let mut bad = batch.clone();
    bad[1] = Upload::bytes(b"other".to_vec(), d.join("etc/b.conf").to_str().unwrap(), 0o644);
    bad[1].sha256 = up.sha256.clone();
    bad[0] = Upload::bytes(b"a=2\n".to_vec(), d.join("etc/a.conf").to_str().unwrap(), 0o644);
    let e = t.upload_batch(&bad, None).await.unwrap_err().to_string();
    assert!(e.contains(&format!("{}: checksum mismatch", d.join("etc/b.conf").display())), "{e}");
    assert_eq!(std::fs::read(d.join("etc/a.conf")).unwrap(), b"a=1\n", "nothing of the batch replaced");
    assert!(upload_temps(&d.join("etc")).is_empty() && !d.join("etc/b.conf").exists());
    // A wrong password is a sudo error, and the password is not in it.
    pw_target.sudo = SudoMode::Password(Secret::new("wrong-password"));
    let t = SshTransport::connect(pw_target).await.unwrap();
    let e = t.exec(&Command::new("true").sudo()).await.unwrap_err();
    assert!(matches!(e, TransportError::Sudo { .. }), "{e}");
    assert!(!e.to_string().contains("wrong-password"));

    // End to end: the password comes from the variable the inventory names (ssh.sudoPasswordEnv).
    let inv = tmp.path().join("inventory.yaml");
    std::fs::write(
        &inv,
        format!(
            "cluster: {{name: sudo, kubernetesVersion: v1.35.7}}\n\
             ssh: {{user: {}, port: {}, identityFile: {}, knownHosts: {}, sudoPasswordEnv: KF_TEST_SUDO_PASSWORD}}\n\
             hosts:\n  - {{name: cp1, address: 127.0.0.1, internalAddress: 10.77.1.1, roles: [control-plane, etcd, worker]}}\n",
            withpw.name,
            s.port,
            key.private().display(),
            kh.display()
        ),
    )
    .unwrap();
    let run = |env: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kubeforge"));
        c.args(["exec", "-i", inv.to_str().unwrap(), "--sudo", "--", "id", "-u"]);
        c.env_remove("KF_TEST_SUDO_PASSWORD");
        if let Some(v) = env {
            c.env("KF_TEST_SUDO_PASSWORD", v);
        }
        c.output().unwrap()
    };
    let o = run(Some(&withpw.password));
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("=== cp1 (127.0.0.1): exit 0 in") && out.contains("\n0\n"), "{out}");
    assert!(!out.contains(&withpw.password) && !err.contains(&withpw.password));
    let o = run(None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("ssh.sudoPasswordEnv names KF_TEST_SUDO_PASSWORD, which is not set"), "{err}");
}

/// A sudo password configured for a host whose sudo needs none (NOPASSWD): the password must never become
/// the command's input. Before the probe, `cat` printed it and every upload failed its checksum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sudo_password_never_reaches_a_host_whose_sudo_needs_none() {
    if !enabled() {
        return;
    }
    let SudoHosts { key, nopw, withpw, s, tmp, kh, root_only } = SudoHosts::start("nq", "pq");
    let password = "pw-that-must-stay-secret-4711";

    let mut tg = target("np", "127.0.0.1", s.port, &nopw.name, &key, &kh, false);
    tg.sudo = SudoMode::Password(Secret::new(password));
    let t = SshTransport::connect(tg).await.unwrap();
    let input = b"first line\nsecond\n".to_vec();
    let out = t
        .exec_io(&Command::new("cat").sudo(), Some(Box::new(std::io::Cursor::new(input.clone()))), None)
        .await
        .unwrap();
    assert!(out.success(), "{}", out.stderr_str());
    assert_eq!(out.stdout, input, "the command's input is exactly what was sent: no password line");
    assert_eq!(stdout(&t, Command::new("id").arg("-u").sudo()).await, "0");
    let dest = root_only.join("conf");
    let up = Upload::bytes(b"k=v\n".to_vec(), dest.to_str().unwrap(), 0o600).owner("root:root");
    assert_eq!(t.upload(&up).await.unwrap(), UploadOutcome::Written);
    assert_eq!(std::fs::read(&dest).unwrap(), b"k=v\n");
    let st = t.stats();
    // cat, id, upload's digest check and the upload itself, plus one sudo probe for the connection.
    assert_eq!((st.connects, st.round_trips), (1, 5), "sudo is probed once per connection");

    // The same configuration on a host whose sudo asks: the password is used there.
    let mut tg = target("pw", "127.0.0.1", s.port, &withpw.name, &key, &kh, false);
    tg.sudo = SudoMode::Password(Secret::new(withpw.password.clone()));
    let t = SshTransport::connect(tg).await.unwrap();
    let out = t
        .exec_io(&Command::new("cat").sudo(), Some(Box::new(std::io::Cursor::new(input.clone()))), None)
        .await
        .unwrap();
    assert_eq!((out.status, &out.stdout), (Some(0), &input), "{}", out.stderr_str());

    // End to end: `kubeforge exec --sudo -- cat` prints nothing of the password.
    let inv = tmp.path().join("inventory.yaml");
    std::fs::write(
        &inv,
        format!(
            "cluster: {{name: sudo, kubernetesVersion: v1.35.7}}\n\
             ssh: {{user: {}, port: {}, identityFile: {}, knownHosts: {}, sudoPasswordEnv: KF_TEST_SUDO_PASSWORD}}\n\
             hosts:\n  - {{name: cp1, address: 127.0.0.1, internalAddress: 10.77.1.1, roles: [control-plane, etcd, worker]}}\n",
            nopw.name,
            s.port,
            key.private().display(),
            kh.display()
        ),
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_kubeforge"))
        .args(["exec", "-i", inv.to_str().unwrap(), "--sudo", "--", "cat"])
        .env("KF_TEST_SUDO_PASSWORD", password)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let (code, out, err) = outcome(o);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("=== cp1 (127.0.0.1): exit 0 in"), "{out}");
    assert!(!out.contains(password) && !err.contains(password), "the password leaked:\n{out}{err}");
}

/// `@cert-authority` lines (and wildcard patterns) verify a host as OpenSSH does: a host certificate from
/// the trusted CA connects with nothing recorded; a certificate for another name, an expired one or a
/// revoked CA is refused, also with --accept-new-host-keys. OpenSSH's own `ssh` agrees on each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_certificate_from_a_ca_in_known_hosts_is_verified_as_openssh_does() {
    if !enabled() {
        return;
    }
    let key = ClientKey::new();
    let mut s = Sshd::start(&key, &["127.0.0.1"], "");
    let tmp = tempfile::tempdir().unwrap();
    let d = s.dir.path().to_path_buf();
    let ca = tmp.path().join("ca");
    sh(&format!("ssh-keygen -q -t ed25519 -N '' -C test-ca -f {}", ca.display()));
    let ca_pub = std::fs::read_to_string(format!("{}.pub", ca.display())).unwrap().trim().to_string();
    let sign = |s: &mut Sshd, principals: &str, validity: &str| {
        sh(&format!(
            "ssh-keygen -q -s {} -I test-host -h -n {principals} -V {validity} {}/host_ed25519.pub",
            ca.display(),
            d.display()
        ));
        s.restart();
    };
    let config = d.join("sshd_config");
    let mut c = std::fs::read_to_string(&config).unwrap();
    c.push_str(&format!("HostCertificate {}/host_ed25519-cert.pub\n", d.display()));
    std::fs::write(&config, c).unwrap();
    sign(&mut s, "127.0.0.1", "-5m:+1h");
    let (port, fp, host_key) = (s.port, s.fingerprint(), s.host_key());

    let kh = tmp.path().join("known_hosts");
    let openssh = |kh: &Path| {
        std::process::Command::new("ssh")
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o"])
            .arg(format!("UserKnownHostsFile={}", kh.display()))
            .arg("-i")
            .arg(key.private())
            .args(["-p", &port.to_string(), "root@127.0.0.1", "true"])
            .output()
            .unwrap()
            .status
            .success()
    };
    let connect =
        |accept: bool| SshTransport::connect(target("cp1", "127.0.0.1", port, "root", &key, &kh, accept));
    std::fs::write(&kh, format!("@cert-authority 127.0.0.?,!10.* {ca_pub}\n")).unwrap();
    assert!(openssh(&kh), "OpenSSH verifies the host by its certificate (bare name: no port in the line)");
    let t = connect(false).await.unwrap_or_else(|e| panic!("the certificate must verify the host: {e}"));
    assert!(t.exec(&Command::new("true")).await.unwrap().success());
    t.close().await;
    assert_eq!(std::fs::read_to_string(&kh).unwrap().lines().count(), 1, "nothing recorded");

    // A CA line whose negated pattern excludes the host does not apply: the host is unknown, as for ssh.
    std::fs::write(&kh, format!("@cert-authority *,![127.0.0.1]:*,!127.0.0.1 {ca_pub}\n")).unwrap();
    assert!(!openssh(&kh));
    let e = connect(false).await.err().expect("no CA applies: unknown");
    assert!(matches!(e, TransportError::UnknownHostKey { .. }), "{e}");

    // A wildcard plain line verifies the plain key (the certificate from an untrusted CA is its key).
    std::fs::write(&kh, format!("[127.0.0.?]:{port} {host_key}\n")).unwrap();
    assert!(openssh(&kh));
    connect(false).await.unwrap_or_else(|e| panic!("a wildcard line must match: {e}")).close().await;

    // Refusals, whatever --accept-new-host-keys says; OpenSSH refuses each too.
    let refused = |e: TransportError, want: &str| {
        assert!(matches!(e, TransportError::Config { .. }), "{e}");
        assert!(e.to_string().contains(want), "{e}");
        assert!(e.to_string().contains(&fp), "{e}");
    };
    std::fs::write(&kh, format!("@cert-authority * {ca_pub}\n@revoked * {ca_pub}\n")).unwrap();
    assert!(!openssh(&kh));
    refused(connect(true).await.err().unwrap(), "marks the CA that signed the host certificate @revoked");
    std::fs::write(&kh, format!("@cert-authority * {ca_pub}\n")).unwrap();
    sign(&mut s, "node-other", "-5m:+1h");
    assert!(!openssh(&kh));
    refused(connect(true).await.err().unwrap(), "not valid for 127.0.0.1 (principals: node-other)");
    sign(&mut s, "127.0.0.1", "20200101:20200102");
    assert!(!openssh(&kh));
    refused(connect(true).await.err().unwrap(), "outside its validity period");
    assert_eq!(std::fs::read_to_string(&kh).unwrap().lines().count(), 1, "nothing recorded");
    // A revoked plain key is refused too.
    std::fs::write(&kh, format!("@revoked * {host_key}\n")).unwrap();
    std::fs::write(&config, std::fs::read_to_string(&config).unwrap().replace("HostCertificate", "#"))
        .unwrap();
    s.restart();
    assert!(!openssh(&kh));
    refused(connect(true).await.err().unwrap(), "marks this host key @revoked");
}

/// A host recorded (or pinned) with only one of its keys, not the one russh would pick first: kubeforge asks
/// for the recorded key type first, as `ssh` does, so the host is verified instead of looking changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_recorded_with_only_its_ecdsa_key_is_verified_by_that_key() {
    if !enabled() {
        return;
    }
    let key = ClientKey::new();
    let mut s = Sshd::start(&key, &["127.0.0.1"], "");
    let d = s.dir.path().to_path_buf();
    sh(&format!("ssh-keygen -q -t ecdsa -b 256 -N '' -C test-host -f {}/host_ecdsa", d.display()));
    let config = d.join("sshd_config");
    let c = std::fs::read_to_string(&config).unwrap() + &format!("HostKey {}/host_ecdsa\n", d.display());
    std::fs::write(&config, c).unwrap();
    s.restart();
    let ecdsa = std::fs::read_to_string(d.join("host_ecdsa.pub")).unwrap();
    let ecdsa: String = ecdsa.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let tmp = tempfile::tempdir().unwrap();
    let kh = tmp.path().join("known_hosts");
    std::fs::write(&kh, format!("[127.0.0.1]:{} {ecdsa}\n", s.port)).unwrap();
    sh(&format!(
        "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -i {} -p {} root@127.0.0.1 true",
        kh.display(),
        key.private().display(),
        s.port
    ));
    let t = SshTransport::connect(target("cp1", "127.0.0.1", s.port, "root", &key, &kh, false))
        .await
        .unwrap_or_else(|e| panic!("the recorded ECDSA key must verify the host: {e}"));
    assert!(t.exec(&Command::new("true")).await.unwrap().success());
    let mut pinned = target("cp1", "127.0.0.1", s.port, "root", &key, &kh, false);
    pinned.host_key = HostKeyPolicy::Pinned(ecdsa);
    let t = SshTransport::connect(pinned).await.unwrap_or_else(|e| panic!("the pinned ECDSA key: {e}"));
    assert!(t.exec(&Command::new("true")).await.unwrap().success());
}

/// ssh reads every `UserKnownHostsFile` and the global files; a host recorded only in the second file is
/// verified, not unknown, and a new key would go to the first.
#[test]
fn a_host_recorded_in_the_second_known_hosts_file_is_known() {
    if !enabled() {
        return;
    }
    let key = ClientKey::new();
    let s = Sshd::start(&key, &["127.0.0.1"], "");
    let tmp = tempfile::tempdir().unwrap();
    let (first, second) = (tmp.path().join("kh1"), tmp.path().join("kh2"));
    std::fs::write(&second, format!("[127.0.0.1]:{} {}\n", s.port, s.host_key())).unwrap();
    std::fs::write(
        tmp.path().join("ssh_config"),
        format!(
            "Host node\n  HostName 127.0.0.1\n  Port {}\n  User root\n  IdentityFile {}\n  StrictHostKeyChecking yes\n  \
             UserKnownHostsFile {} {}\n",
            s.port,
            key.private().display(),
            first.display(),
            second.display()
        ),
    )
    .unwrap();
    let inv = tmp.path().join("inventory.yaml");
    std::fs::write(
        &inv,
        "cluster: {name: kh, kubernetesVersion: v1.35.7}\nssh: {configFile: ssh_config}\n\
         hosts:\n  - {name: cp1, address: node, internalAddress: 10.77.1.1, roles: [control-plane, etcd, worker]}\n",
    )
    .unwrap();
    let (code, out, err) = kubeforge(&["exec", "-i", inv.to_str().unwrap(), "--", "true"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!first.exists(), "nothing recorded");
}

/// The common Vagrant/CI client config would make every connection trust any key: `kubeforge` refuses it
/// before connecting, naming the config lines and the fix, and accepts it once the key is pinned.
#[test]
fn strict_host_key_checking_no_with_known_hosts_dev_null_is_refused_unless_the_key_is_pinned() {
    if !enabled() {
        return;
    }
    let key = ClientKey::new();
    let s = Sshd::start(&key, &["127.0.0.1"], "");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("ssh_config");
    std::fs::write(
        &cfg,
        format!(
            "Host node\n  HostName 127.0.0.1\n  Port {}\n  User root\n  IdentityFile {}\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n",
            s.port,
            key.private().display()
        ),
    )
    .unwrap();
    let inv = tmp.path().join("inventory.yaml");
    let write = |pin: &str| {
        std::fs::write(
            &inv,
            format!(
                "cluster: {{name: kh, kubernetesVersion: v1.35.7}}\nssh: {{configFile: ssh_config}}\n\
                 hosts:\n  - {{name: cp1, address: node, internalAddress: 10.77.1.1, roles: [control-plane, etcd, worker]{pin}}}\n"
            ),
        )
        .unwrap()
    };
    write("");
    let (code, out, err) = kubeforge(&["exec", "-i", inv.to_str().unwrap(), "--", "true"]);
    assert_ne!(code, 0, "{out}{err}");
    for want in [
        format!("{}:6 (StrictHostKeyChecking no", cfg.display()),
        format!("known_hosts is /dev/null ({}:7 (UserKnownHostsFile))", cfg.display()),
        "hosts[0].ssh.hostKey".to_string(),
    ] {
        assert!(err.contains(&want), "missing `{want}` in:\n{err}");
    }
    assert!(!s.log().contains("Accepted publickey"), "refused before connecting:\n{}", s.log());
    write(&format!(", ssh: {{hostKey: {}}}", s.host_key()));
    let (code, out, err) = kubeforge(&["exec", "-i", inv.to_str().unwrap(), "--", "true"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_key_is_refused_with_its_fingerprint_and_recorded_only_on_request() {
    if !enabled() {
        return;
    }
    let key = ClientKey::new();
    let s = Sshd::start(&key, &["127.0.0.1"], "");
    let tmp = tempfile::tempdir().unwrap();
    let kh = tmp.path().join("ssh/known_hosts");

    let e = SshTransport::connect(target("cp1", "127.0.0.1", s.port, "root", &key, &kh, false))
        .await
        .err()
        .expect("an unknown key must be refused");
    let pattern = format!("[127.0.0.1]:{}", s.port);
    assert_eq!(e.to_string(), format!("cp1: unknown host key {} for {pattern}", s.fingerprint()));
    assert!(e.hint().unwrap().contains("--accept-new-host-keys"));
    assert!(!kh.exists(), "nothing is recorded without --accept-new-host-keys");

    let t = SshTransport::connect(target("cp1", "127.0.0.1", s.port, "root", &key, &kh, true)).await.unwrap();
    assert!(t.exec(&Command::new("true")).await.unwrap().success());
    assert_eq!(std::fs::read_to_string(&kh).unwrap(), format!("{pattern} {}\n", s.host_key()));
    assert_eq!(std::fs::metadata(&kh).unwrap().permissions().mode() & 0o777, 0o600);
    // OpenSSH itself reads what was recorded: ssh-keygen finds it, ssh connects with strict checking.
    sh(&format!("ssh-keygen -F '{pattern}' -f {} | grep -q ssh-ed25519", kh.display()));
    sh(&format!(
        "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -i {} -p {} root@127.0.0.1 true",
        kh.display(),
        key.private().display(),
        s.port
    ));
    // From now on the host is known without the flag, and nothing more is appended.
    let t =
        SshTransport::connect(target("cp1", "127.0.0.1", s.port, "root", &key, &kh, false)).await.unwrap();
    assert!(t.exec(&Command::new("true")).await.unwrap().success());
    assert_eq!(std::fs::read_to_string(&kh).unwrap().lines().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_host_key_is_refused_even_with_accept_new() {
    if !enabled() {
        return;
    }
    let key = ClientKey::new();
    let mut s = Sshd::start(&key, &["127.0.0.1"], "");
    let tmp = tempfile::tempdir().unwrap();
    let kh = trusting(tmp.path(), &s);
    let before = std::fs::read(&kh).unwrap();
    let t =
        SshTransport::connect(target("cp1", "127.0.0.1", s.port, "root", &key, &kh, false)).await.unwrap();
    assert!(t.exec(&Command::new("true")).await.unwrap().success());

    s.new_host_key();
    for accept in [false, true] {
        let e = SshTransport::connect(target("cp1", "127.0.0.1", s.port, "root", &key, &kh, accept))
            .await
            .err()
            .expect("a changed key must be refused");
        match &e {
            TransportError::HostKeyChanged { fingerprint, recorded_in, .. } => {
                assert_eq!(fingerprint, &s.fingerprint());
                assert_eq!(recorded_in, &format!("{}:1", kh.display()));
            }
            other => panic!("expected HostKeyChanged, got {other}"),
        }
        assert!(e.hint().unwrap().contains(&format!("ssh-keygen -R '[127.0.0.1]:{}'", s.port)), "{e:?}");
    }
    // The old connection is gone with the old sshd; reconnecting on it is refused the same way.
    let e = t.exec(&Command::new("true")).await.unwrap_err();
    assert!(matches!(e, TransportError::HostKeyChanged { .. }), "{e}");
    assert_eq!(std::fs::read(&kh).unwrap(), before, "known_hosts is never rewritten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jump_host_tunnels_with_direct_tcpip() {
    if !enabled() {
        return;
    }
    let key = ClientKey::new();
    // DEBUG1 logs the direct-tcpip requests (sshd copies debug lines into sessions' stderr, so only here).
    let bastion = Sshd::start(&key, &["127.0.0.1"], "LogLevel DEBUG1");
    let node = Sshd::start(&key, &["127.0.0.3"], "");
    let tmp = tempfile::tempdir().unwrap();
    let kh = tmp.path().join("known_hosts");
    let via = |b: &Sshd| {
        let mut t = target("node", "127.0.0.3", node.port, "root", &key, &kh, true);
        t.bastion =
            Some(Box::new(target("node (via bastion)", "127.0.0.1", b.port, "root", &key, &kh, true)));
        t
    };
    let t = SshTransport::connect(via(&bastion)).await.unwrap();
    let out = t.exec(&Command::shell("echo $SSH_CONNECTION")).await.unwrap();
    let fields: Vec<String> = out.stdout_str().split_whitespace().map(str::to_owned).collect();
    assert_eq!(fields[2..], ["127.0.0.3".to_string(), node.port.to_string()], "{fields:?}");
    // The bastion opened the tunnel; both host keys were checked and recorded.
    let log = bastion.log();
    assert!(log.contains(&format!("target 127.0.0.3 port {}", node.port)), "bastion log:\n{log}");
    let recorded = std::fs::read_to_string(&kh).unwrap();
    assert!(recorded.contains(&format!("[127.0.0.1]:{} {}", bastion.port, bastion.host_key())), "{recorded}");
    assert!(recorded.contains(&format!("[127.0.0.3]:{} {}", node.port, node.host_key())), "{recorded}");

    // A bastion that forbids forwarding: the error says that the tunnel was refused.
    let closed = Sshd::start(&key, &["127.0.0.1"], "AllowTcpForwarding no");
    let e = SshTransport::connect(via(&closed)).await.err().expect("the tunnel must be refused");
    assert!(e.to_string().contains("the jump host refused to open a tunnel"), "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.3:{} via 127.0.0.1:{}", node.port, closed.port)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_past_its_timeout_is_stopped_and_the_connection_stays_usable() {
    if !enabled() {
        return;
    }
    let (key, s, _tmp, kh) = loopback_sshd();
    let t =
        SshTransport::connect(target("cp1", "127.0.0.1", s.port, "root", &key, &kh, false)).await.unwrap();
    let cmd = Command::shell("echo started; sleep 4711").timeout(Duration::from_secs(1));
    let t0 = Instant::now();
    let e = t.exec(&cmd).await.unwrap_err();
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(4), "{took:?}");
    assert_eq!(e.to_string(), "cp1: `sh -c 'echo started; sleep 4711' sh` timed out after 1s");
    assert!(t.exec(&Command::new("true")).await.unwrap().success());
    assert_eq!(t.stats().connects, 1, "the timeout did not cost the connection");

    // The remote command does not outlive its timeout.
    let deadline = Instant::now() + Duration::from_secs(5);
    let left = loop {
        let left = running(&["sleep", "4711"]);
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        left.is_empty(),
        "`sleep 4711` still runs after its timeout: pids {left:?}\nsshd log:\n{}",
        s.log()
    );
}

/// A finished upload is durable: the staged file is fsynced before it is renamed into place and its
/// directory after, for a single upload and for a batch. Observed with strace on the sshd serving the
/// connection (its children are followed), so what is checked is what the host really did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_upload_is_fsynced_before_its_rename_and_its_directory_after() {
    if !enabled() {
        return;
    }
    assert!(
        std::process::Command::new("sh").args(["-c", "command -v strace"]).output().unwrap().status.success(),
        "`strace` is missing: run scripts/install-test-deps.sh, or set KUBEFORGE_SSH_TESTS=0"
    );
    let (key, s, tmp, kh) = loopback_sshd();
    // The listener's pid, from its PidFile (sshd retitles itself, so its command line is no guide).
    let pid_file = s.dir.path().join("sshd.pid");
    let pids: Vec<i32> = vec![std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap()];
    let log = tmp.path().join("strace.log");
    let mut strace = std::process::Command::new("strace")
        .args(["-f", "-y", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2", "-o"])
        .arg(&log)
        .args(["-p", &pids[0].to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(format!("/proc/{}/status", pids[0]))
        .unwrap()
        .lines()
        .any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0")
    {
        assert!(Instant::now() < deadline, "strace did not attach to sshd");
        std::thread::sleep(Duration::from_millis(20));
    }

    let dir = tmp.path().join("etc/kf");
    let t =
        SshTransport::connect(target("cp1", "127.0.0.1", s.port, "root", &key, &kh, false)).await.unwrap();
    let single = dir.join("single.conf");
    let up = Upload::bytes(b"one\n".to_vec(), single.to_str().unwrap(), 0o644);
    assert_eq!(t.upload(&up).await.unwrap(), UploadOutcome::Written);
    let (b1, b2) = (dir.join("b1.conf"), tmp.path().join("other/b2.conf"));
    let batch = vec![
        Upload::bytes(b"b1\n".to_vec(), b1.to_str().unwrap(), 0o644),
        Upload::bytes(b"b2\n".to_vec(), b2.to_str().unwrap(), 0o600),
    ];
    assert_eq!(t.upload_batch(&batch, None).await.unwrap().files, vec![UploadOutcome::Written; 2]);
    t.close().await;
    // SIGINT: strace detaches and flushes its log.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(strace.id() as i32), nix::sys::signal::Signal::SIGINT)
        .unwrap();
    strace.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let pos = |what: &dyn Fn(&str) -> bool, from: usize, label: &str| -> usize {
        from + lines[from..]
            .iter()
            .position(|l| what(l))
            .unwrap_or_else(|| panic!("no {label} after line {from} in:\n{text}"))
    };
    for dest in [&single, &b1, &b2] {
        let d = dest.parent().unwrap().display().to_string();
        let dest = dest.display().to_string();
        // `renameat2(AT_FDCWD, "<dir>/.kubeforge-upload.XXXXXX", AT_FDCWD, "<dest>", 0) = 0`
        let rename = pos(
            &|l: &str| l.contains("rename") && l.contains(&format!("\"{dest}\"")) && l.ends_with("= 0"),
            0,
            "rename",
        );
        let staged = lines[rename].split('"').nth(1).unwrap().to_string();
        assert!(staged.starts_with(&format!("{d}/.kubeforge-upload.")), "{}", lines[rename]);
        let synced = lines[..rename]
            .iter()
            .any(|l| l.contains("sync(") && l.contains(&format!("<{staged}>")) && l.ends_with("= 0"));
        assert!(synced, "{staged} was not fsynced before its rename to {dest}:\n{text}");
        pos(
            &|l: &str| l.contains("fsync(") && l.contains(&format!("<{d}>")) && l.ends_with("= 0"),
            rename,
            "directory fsync",
        );
    }
    assert_eq!(std::fs::read(&b2).unwrap(), b"b2\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_upload_lands_with_its_sha256_and_mode_in_bounded_memory_and_is_skipped_the_second_time() {
    if !enabled() {
        return;
    }
    let (key, s, tmp, kh) = loopback_sshd();
    let src = tmp.path().join("big.bin");
    random_file(&src, 200);
    let dest_dir = tmp.path().join("opt/kubeforge/bin");
    let dest = dest_dir.join("big.bin");
    let up = Upload::file(&src, dest.to_str().unwrap(), 0o750).unwrap();
    let t = Arc::new(SshTransport::new(target("cp1", "127.0.0.1", s.port, "root", &key, &kh, false)));
    let ex = Executor::new(1, silent());
    let plan = || HostPlan { transport: t.clone(), steps: vec![Step::upload("place big.bin", up.clone())] };

    let rss_before = proc_status_kib("VmRSS");
    let t0 = Instant::now();
    let r = ex.run("upload", vec![plan()]).await.into_result().unwrap();
    // Streaming: the process never holds the file.
    let grown_mib = peak_rss_growth_mib(rss_before);
    eprintln!("200 MiB upload over real sshd: {:?}, peak RSS growth {grown_mib} MiB", t0.elapsed());
    assert!(grown_mib < 50, "uploading 200 MiB grew the peak RSS by {grown_mib} MiB: not streamed");
    assert_eq!(r.hosts[0].changes(), 1);
    assert_eq!(sha256_file(&dest), up.sha256);
    assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777, 0o750);
    assert!(upload_temps(&dest_dir).is_empty());
    let sent = t.stats().bytes_sent;
    assert!(sent >= 200 << 20, "{sent}");

    let r = ex.run("upload", vec![plan()]).await.into_result().unwrap();
    assert_eq!(r.hosts[0].changes(), 0, "same sha256: skipped");
    assert_eq!(t.stats().bytes_sent, sent, "a skipped upload sends no content");
    assert_eq!(t.stats().connects, 1);
}

/// What a plan does with a phase's files: binaries the probe found different travel with the small files
/// and the start command in **one** round trip, streamed (the process never holds them), each checked on
/// the host. A local file that changed size since its digest was taken is refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binaries_and_small_files_travel_in_one_streamed_round_trip_with_the_start() {
    if !enabled() {
        return;
    }
    let (key, s, tmp, kh) = loopback_sshd();
    let dir = tmp.path().join("opt/kubeforge/bin");
    let mut files = Vec::new();
    for (name, mib) in [("kube-apiserver", 64), ("kube-scheduler", 48)] {
        let src = tmp.path().join(name);
        random_file(&src, mib);
        let up = Upload::file(&src, dir.join(name).to_str().unwrap(), 0o755).unwrap();
        files.push(Upload { precheck: false, ..up });
    }
    files.push(Upload::bytes(
        b"[Unit]\n".to_vec(),
        tmp.path().join("etc/a.service").to_str().unwrap(),
        0o600,
    ));
    files
        .push(Upload::bytes(b"key".to_vec(), tmp.path().join("pki/a.key").to_str().unwrap(), 0o600).secret());
    let then = Command::new("sh").arg("-c").arg("ls -- \"$0\"").arg(dir.to_str().unwrap()).sudo();
    let t = SshTransport::new(target("cp1", "127.0.0.1", s.port, "root", &key, &kh, false));
    t.exec(&Command::new("true")).await.unwrap();

    let rss_before = proc_status_kib("VmRSS");
    let before = t.stats();
    let done = kubeforge::transport::upload_all(&t, &files, Some(&then)).await.unwrap();
    let after = t.stats();
    let grown_mib = peak_rss_growth_mib(rss_before);
    assert_eq!(done.files, vec![UploadOutcome::Written; 4]);
    assert_eq!(
        after.round_trips - before.round_trips,
        1,
        "two binaries, two files and the start: one round trip"
    );
    assert_eq!(after.bytes_sent - before.bytes_sent, (112 << 20) + 7 + 3);
    assert!(grown_mib < 50, "sending 112 MiB grew the peak RSS by {grown_mib} MiB: not streamed");
    assert_eq!(
        done.then.unwrap().stdout_str(),
        "kube-apiserver\nkube-scheduler\n",
        "the start ran after the files"
    );
    for f in &files {
        assert_eq!(sha256_file(Path::new(&f.dest)), f.sha256, "{}", f.dest);
    }
    assert_eq!(std::fs::metadata(dir.join("kube-apiserver")).unwrap().permissions().mode() & 0o7777, 0o755);
    assert!(upload_temps(&dir).is_empty());

    // The apiserver binary changes locally after its digest was taken: refused, nothing sent.
    random_file(&tmp.path().join("kube-apiserver"), 1);
    let mut again = files.clone();
    again[2] = Upload::bytes(b"[Unit]\nX=1\n".to_vec(), files[2].dest.clone(), 0o600);
    let e = kubeforge::transport::upload_all(&t, &again, None).await.unwrap_err();
    let e = format!("{e}: {}", std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default());
    assert!(e.contains("kube-apiserver: 1048576 bytes where 67108864 were announced"), "{e}");
    assert_eq!(t.stats().bytes_sent, after.bytes_sent, "nothing sent");
    assert_eq!(std::fs::read(&files[2].dest).unwrap(), b"[Unit]\n", "nothing replaced");
}

/// What `backup` and `upgrade` do with an etcd snapshot: a file read back over real sshd reports its bytes as
/// they arrive (the progress bar), arrives whole, and one larger than the limit is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_read_back_reports_its_progress_as_the_bytes_arrive() {
    if !enabled() {
        return;
    }
    let (key, s, tmp, kh) = loopback_sshd();
    let src = tmp.path().join("snapshot.db");
    random_file(&src, 24);
    let size = std::fs::metadata(&src).unwrap().len();
    let t = SshTransport::new(target("cp1", "127.0.0.1", s.port, "root", &key, &kh, false));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let hook: kubeforge::transport::ByteProgress = {
        let seen = seen.clone();
        Arc::new(move |n| seen.lock().unwrap().push(n))
    };
    let path = src.to_str().unwrap();
    let got = t.read_file_progress(path, true, 64 << 20, Some(hook)).await.unwrap();
    assert_eq!(hex::encode(Sha256::digest(&got)), sha256_file(&src));
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() > 10, "24 MiB arrive in many channel messages, each reported: {}", seen.len());
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "the running total only grows");
    assert_eq!(seen.last(), Some(&size), "the last report is the whole file");

    let e = t.read_file_progress(path, true, 1 << 20, None).await.unwrap_err().to_string();
    assert!(e.contains("larger than 1048576 bytes"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshd_dying_mid_upload_is_a_clear_error_leaves_nothing_and_a_rerun_succeeds() {
    if !enabled() {
        return;
    }
    let key = ClientKey::new();
    let mut s = Sshd::start(&key, &["127.0.0.1"], "");
    let tmp = tempfile::tempdir().unwrap();
    let kh = trusting(tmp.path(), &s);
    let src = tmp.path().join("kubelet");
    random_file(&src, 256);
    let dest_dir = tmp.path().join("usr/local/bin");
    let dest = dest_dir.join("kubelet");
    let up = Upload::file(&src, dest.to_str().unwrap(), 0o755).unwrap();
    let t = Arc::new(SshTransport::new(target("worker-7", "127.0.0.1", s.port, "root", &key, &kh, false)));
    let ex = Executor::new(1, silent());
    let plan = || HostPlan { transport: t.clone(), steps: vec![Step::upload("install kubelet", up.clone())] };

    let run = tokio::spawn({
        let (ex, p) = (ex.clone(), plan());
        async move { ex.run("nodes", vec![p]).await }
    });
    // Kill sshd once the temporary file holds a few MiB: the upload is surely in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let size: u64 = upload_temps(&dest_dir)
            .iter()
            .filter_map(|n| std::fs::metadata(dest_dir.join(n)).ok())
            .map(|m| m.len())
            .sum();
        if size >= 8 << 20 {
            break;
        }
        assert!(!run.is_finished(), "the upload ended before sshd could be killed");
        assert!(Instant::now() < deadline, "the upload never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    s.kill_all();
    let report = tokio::time::timeout(Duration::from_secs(20), run).await.expect("no hang").unwrap();
    assert_eq!(report.failures.len(), 1);
    let f = &report.failures[0];
    assert_eq!((f.host.as_str(), f.step.as_str()), ("worker-7", "install kubelet"));
    let shown = f.to_string();
    assert!(
        shown.starts_with(&format!(
            "worker-7: step 'install kubelet' failed: worker-7: connection lost while running `upload {} ",
            dest.display()
        )),
        "{shown}"
    );
    let err = report.into_result().unwrap_err();
    assert!(err.hint().unwrap().contains("re-running resumes safely"));

    // The short stream is never renamed into place, and the remote side cleans up its temporary file.
    assert!(!dest.exists(), "a partial upload must never reach the destination");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !upload_temps(&dest_dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(upload_temps(&dest_dir), Vec::<String>::new(), "temporary upload files left behind");

    s.restart();
    let r = ex.run("nodes", vec![plan()]).await.into_result().unwrap();
    assert_eq!(r.hosts[0].changes(), 1);
    assert_eq!(sha256_file(&dest), up.sha256);
    assert_eq!(t.stats().connects, 2, "the transport reconnected by itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_hosts_at_once_on_four_sshds() {
    if !enabled() {
        return;
    }
    let key = ClientKey::new();
    // sshd listens on at most 16 sockets: 4 servers, 12 or 13 addresses each, 50 hosts.
    let groups: Vec<Vec<String>> = (0..4)
        .map(|g| (0..50).filter(|i| i % 4 == g).map(|i| format!("127.0.0.{}", 20 + i)).collect())
        .collect();
    let servers: Vec<Sshd> = groups
        .iter()
        .map(|a| Sshd::start(&key, &a.iter().map(String::as_str).collect::<Vec<_>>(), ""))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let kh = tmp.path().join("known_hosts");
    let hosts: Vec<(String, String, u16)> = groups
        .iter()
        .zip(&servers)
        .flat_map(|(addrs, srv)| addrs.iter().map(move |a| (a.clone(), srv.port)))
        .enumerate()
        .map(|(i, (addr, port))| (format!("node-{i:02}"), addr, port))
        .collect();
    let plans: Vec<HostPlan> = hosts
        .iter()
        .map(|(name, addr, port)| {
            let t = Arc::new(SshTransport::new(target(name, addr, *port, "root", &key, &kh, true)));
            let dest = tmp.path().join(name).join("config.yaml");
            HostPlan {
                transport: t,
                steps: vec![
                    Step::probe("whoami", Command::shell("echo $SSH_CONNECTION")),
                    Step::upload(
                        "config",
                        Upload::bytes(format!("name: {name}\n"), dest.to_str().unwrap(), 0o644),
                    ),
                ],
            }
        })
        .collect();
    let t0 = Instant::now();
    let r = Executor::new(50, silent()).run("fan-out", plans).await.into_result().unwrap();
    eprintln!("50 hosts, connect + exec + upload: {:?}", t0.elapsed());
    assert_eq!(r.hosts.len(), 50);
    for (h, (name, addr, port)) in r.hosts.iter().zip(&hosts) {
        assert_eq!(&h.host, name);
        let conn = h.results[0].output.as_ref().unwrap().stdout_str();
        assert!(conn.trim_end().ends_with(&format!("{addr} {port}")), "{name}: {conn}");
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(name).join("config.yaml")).unwrap(),
            format!("name: {name}\n")
        );
        assert_eq!(h.stats.connects, 1);
    }
    // Parallel acceptance appended every key once, whole lines only.
    let recorded = std::fs::read_to_string(&kh).unwrap();
    let mut lines: Vec<&str> = recorded.lines().collect();
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), 50, "{recorded}");
    for (_, addr, port) in &hosts {
        let key = servers.iter().find(|s| s.port == *port).unwrap().host_key();
        assert!(lines.contains(&format!("[{addr}]:{port} {key}").as_str()), "{addr}: {recorded}");
    }
}

/// An inventory for the CLI tests: `cp1` and two workers on `s`, and `down`, where nothing listens.
fn cli_inventory(dir: &Path, s: &Sshd, key: &ClientKey, down_port: u16) -> PathBuf {
    let inv = dir.join("inventory.yaml");
    let text = format!(
        "cluster: {{name: sshtest, kubernetesVersion: v1.35.7}}\n\
         ssh: {{user: root, port: {}, identityFile: {}, knownHosts: known_hosts}}\n\
         hosts:\n\
         \x20 - {{name: cp1, address: {}, internalAddress: 10.77.1.1, roles: [control-plane, etcd]}}\n\
         \x20 - {{name: w1, address: {}, internalAddress: 10.77.1.2, roles: [worker]}}\n\
         \x20 - {{name: w2, address: {}, internalAddress: 10.77.1.3, roles: [worker]}}\n\
         \x20 - {{name: down, address: 127.0.0.99, internalAddress: 10.77.1.4, roles: [worker], ssh: {{port: {down_port}}}}}\n",
        s.port,
        key.private().display(),
        s.addrs[0],
        s.addrs[1],
        s.addrs[2]
    );
    std::fs::write(&inv, text).unwrap();
    inv
}

/// Exit code, stdout and stderr of a finished process.
fn outcome(o: std::process::Output) -> (i32, String, String) {
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// Runs the binary with `HOME` in a directory of its own, so no ~/.ssh of this machine is read.
fn kubeforge(args: &[&str]) -> (i32, String, String) {
    let home = tempfile::tempdir().unwrap();
    outcome(
        std::process::Command::new(env!("CARGO_BIN_EXE_kubeforge"))
            .args(args)
            .env("HOME", home.path())
            .output()
            .unwrap(),
    )
}

#[test]
fn kubeforge_exec_end_to_end() {
    if !enabled() {
        return;
    }
    let key = ClientKey::new();
    let s = Sshd::start(&key, &["127.0.0.61", "127.0.0.62", "127.0.0.63"], "");
    let tmp = tempfile::tempdir().unwrap();
    let down = sshd::free_port();
    let inv = cli_inventory(tmp.path(), &s, &key, down);
    let inv = inv.to_str().unwrap();

    // Unknown keys: every host refused, with the fingerprint and the flag to accept it.
    let (code, out, err) = kubeforge(&["exec", "-i", inv, "--hosts", "@worker", "--", "true"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.ends_with("3 host(s): 0 ok, 0 failed, 3 unreachable (w1, w2, down)\n"), "{out}");
    assert!(
        err.contains(&format!(
            "error: w1: unreachable: unknown host key {} for [127.0.0.62]:{}",
            s.fingerprint(),
            s.port
        )),
        "{err}"
    );
    assert!(err.contains("--accept-new-host-keys"), "{err}");

    // Output grouped per host, in inventory order, then the summary.
    let (code, out, err) = kubeforge(&[
        "exec",
        "-i",
        inv,
        "--hosts",
        "w2,cp1,w1",
        "--accept-new-host-keys",
        "--",
        "echo \"on $(echo $SSH_CONNECTION | cut -d' ' -f3)\"; echo careful >&2",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let blocks: Vec<&str> = out.split("=== ").skip(1).collect();
    assert_eq!(blocks.len(), 3, "{out}");
    for (block, (name, addr)) in
        blocks.iter().zip([("cp1", "127.0.0.61"), ("w1", "127.0.0.62"), ("w2", "127.0.0.63")])
    {
        let lines: Vec<&str> = block.lines().collect();
        assert!(lines[0].starts_with(&format!("{name} ({addr}): exit 0 in ")), "{block}");
        assert_eq!(
            lines[1..4],
            [format!("on {addr}"), format!("--- {name} stderr"), "careful".into()],
            "{block}"
        );
    }
    assert!(out.ends_with("3 host(s): 3 ok, 0 failed, 0 unreachable\n"), "{out}");
    assert_eq!(std::fs::read_to_string(tmp.path().join("known_hosts")).unwrap().lines().count(), 3);

    // Several arguments are an argv; a non-zero exit fails the run and names the host.
    let (code, out, err) =
        kubeforge(&["exec", "-i", inv, "--hosts", "role=worker", "--", "sh", "-c", "echo no >&2; exit 3"]);
    assert_eq!(code, 1);
    assert!(out.contains("=== w1 (127.0.0.62): exit 3 in "), "{out}");
    assert!(out.ends_with("3 host(s): 0 ok, 2 failed (w1, w2), 1 unreachable (down)\n"), "{out}");
    assert!(err.contains("error: w1: exit 3\n") && err.contains("error: w2: exit 3\n"), "{err}");

    // An unreachable host is reported with its reason; the others still run.
    let (code, out, err) = kubeforge(&["exec", "-i", inv, "--", "true"]);
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!("=== down (127.0.0.99): UNREACHABLE: cannot connect to 127.0.0.99:{down}: ")),
        "{out}"
    );
    assert!(out.ends_with("4 host(s): 3 ok, 0 failed, 1 unreachable (down)\n"), "{out}");
    assert!(err.contains("hint: check that the host is up"), "{err}");

    // A timeout is a failure of that host.
    let (code, out, _) =
        kubeforge(&["exec", "-i", inv, "--hosts", "w1", "--timeout", "1s", "--", "sleep 4712"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("=== w1 (127.0.0.62): TIMED OUT: `sh -c 'sleep 4712' sh` timed out after 1s"),
        "{out}"
    );

    // A bad selector is invalid input: exit 2, no connection made.
    let connections = s.log().matches("Connection from").count();
    let (code, out, err) = kubeforge(&["exec", "-i", inv, "--hosts", "w1,cp2", "--", "true"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(
        err.starts_with("error: --hosts: the inventory has no host named `cp2`\n  hint: did you mean `cp1`?"),
        "{err}"
    );
    let (code, _, err) = kubeforge(&["exec", "-i", inv, "--hosts", "@workers", "--", "true"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown role `workers`"), "{err}");
    assert_eq!(s.log().matches("Connection from").count(), connections);
}

#[test]
fn kubeforge_check_end_to_end() {
    if !enabled() {
        return;
    }
    let key = ClientKey::new();
    let s = Sshd::start(&key, &["127.0.0.71", "127.0.0.72", "127.0.0.73"], "");
    let tmp = tempfile::tempdir().unwrap();
    let down = sshd::free_port();
    let inv = cli_inventory(tmp.path(), &s, &key, down);
    let inv = inv.to_str().unwrap();
    // Hold the scheduler's port, so one port is certainly in use (if something else holds it, also fine).
    let _held = std::net::TcpListener::bind("127.0.0.1:10259");

    let (code, out, err) = kubeforge(&["check", "-i", inv, "--accept-new-host-keys"]);
    assert_eq!(code, 1, "the unreachable host fails the check:\n{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("HOST  ADDRESS     OS  "), "{out}");
    let kernel = sh("uname -r");
    let arch = sh("uname -m");
    for (i, (name, addr)) in
        [("cp1", "127.0.0.71"), ("w1", "127.0.0.72"), ("w2", "127.0.0.73")].iter().enumerate()
    {
        let row = lines[i + 1];
        assert!(row.starts_with(&format!("{name:<4}  {addr:<10}  Debian")), "{out}");
        assert!(row.contains(kernel.trim()) && row.contains(arch.trim()), "{row}");
        assert!(row.contains("in use: ") && row.contains("10259"), "{row}");
    }
    assert!(
        lines[4].starts_with(&format!("down  127.0.0.99  UNREACHABLE: cannot connect to 127.0.0.99:{down}")),
        "{out}"
    );
    assert!(out.trim_end().lines().last().unwrap().starts_with("4 host(s): 3 answered, 1 did not;"), "{out}");
    assert!(err.contains("error: down: unreachable: cannot connect"), "{err}");

    let (code, out, err) = kubeforge(&["check", "-i", inv, "--hosts", "cp1,w1,w2", "--output", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["cluster"], "sshtest");
    let hosts = doc["hosts"].as_array().unwrap();
    assert_eq!(hosts.iter().map(|h| h["host"].as_str().unwrap()).collect::<Vec<_>>(), ["cp1", "w1", "w2"]);
    let nproc: u64 = sh("nproc").trim().parse().unwrap();
    for h in hosts {
        assert_eq!(h["status"], "ok", "{h}");
        assert_eq!(h["roundTrips"], 1, "one round trip per host: {h}");
        let f = &h["facts"];
        assert_eq!(f["kernel"], kernel.trim());
        assert_eq!(f["arch"], arch.trim());
        assert_eq!(f["cpus"].as_u64(), Some(nproc));
        assert!(f["memoryMib"].as_u64().unwrap() > 0 && !f["os"].as_str().unwrap().is_empty(), "{f}");
        assert!(f["swap"]["on"].is_boolean() && f["systemd"]["installed"].is_boolean(), "{f}");
        let ports: Vec<u64> =
            f["ports"].as_array().unwrap().iter().map(|p| p["port"].as_u64().unwrap()).collect();
        assert_eq!(ports, [6443, 2379, 2380, 10250, 10257, 10259]);
        assert_eq!(f["ports"][5]["free"], false, "{f}");
    }
    // The unreachable host as a JSON row.
    let (code, out, _) = kubeforge(&["check", "-i", inv, "--hosts", "down", "--output", "json"]);
    assert_eq!(code, 1);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = &doc["hosts"][0];
    assert_eq!((row["status"].as_str(), row["facts"].is_null()), (Some("unreachable"), true), "{row}");
    assert!(
        row["error"].as_str().unwrap().starts_with(&format!("cannot connect to 127.0.0.99:{down}")),
        "{row}"
    );
}

/// Runs the binary with `HOME` set to `home` (so no ~/.ssh of this machine is read) and `stdin` as input.
fn kubeforge_in(home: &Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kubeforge"))
        .args(args)
        .env("HOME", home)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    outcome(child.wait_with_output().unwrap())
}

#[test]
fn a_proxyjump_chain_and_a_host_alias_defined_only_in_an_ssh_config_file() {
    if !enabled() {
        return;
    }
    let key = ClientKey::new();
    // DEBUG1 makes each jump host log the direct-tcpip tunnel it opens.
    let jump1 = Sshd::start(&key, &["127.0.0.81"], "LogLevel DEBUG1");
    let jump2 = Sshd::start(&key, &["127.0.0.82"], "LogLevel DEBUG1");
    let node = Sshd::start(&key, &["127.0.0.83"], "");
    let direct = Sshd::start(&key, &["127.0.0.84"], "");
    let tmp = tempfile::tempdir().unwrap();
    let kh = tmp.path().join("known_hosts");
    // The inventory says nothing about users, ports, keys or jump hosts: everything comes from here.
    let cfg = format!(
        "Host node1\n  HostName 127.0.0.83\n  Port {}\n  ProxyJump jump1,jump2\n\
         Host jump1\n  HostName 127.0.0.81\n  Port {}\n\
         Host jump2\n  HostName 127.0.0.82\n  Port {}\n\
         Host only-in-config\n  HostName 127.0.0.84\n  Port {}\n\
         Host *\n  User root\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  \
         StrictHostKeyChecking accept-new\n",
        node.port,
        jump1.port,
        jump2.port,
        direct.port,
        key.private().display(),
        kh.display()
    );
    std::fs::write(tmp.path().join("ssh_config"), &cfg).unwrap();
    let inv = tmp.path().join("inventory.yaml");
    std::fs::write(
        &inv,
        "cluster: {name: cfg, kubernetesVersion: v1.35.7}\nssh: {configFile: ssh_config}\nhosts:\n\
         \x20 - {name: cp1, address: node1, internalAddress: 10.77.0.1, roles: [control-plane, etcd, worker]}\n\
         \x20 - {name: w1, address: only-in-config, internalAddress: 10.77.0.2, roles: [worker]}\n",
    )
    .unwrap();
    let inv = inv.to_str().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();

    let (code, out, err) =
        kubeforge_in(&home, &["exec", "-i", inv, "--", "echo $SSH_CONNECTION | cut -d' ' -f3,4"], "");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("=== cp1 (node1): exit 0 in"), "{out}");
    assert!(out.contains(&format!("\n127.0.0.83 {}\n", node.port)), "{out}");
    assert!(out.contains(&format!("\n127.0.0.84 {}\n", direct.port)), "{out}");
    // The chain in order: jump1 opened the tunnel to jump2, jump2 the one to the node.
    assert!(jump1.log().contains(&format!("target 127.0.0.82 port {}", jump2.port)), "{}", jump1.log());
    assert!(jump2.log().contains(&format!("target 127.0.0.83 port {}", node.port)), "{}", jump2.log());
    assert!(!jump1.log().contains("target 127.0.0.83"), "the node is reached from jump2 only");
    // accept-new from the config recorded all four keys in the config's UserKnownHostsFile.
    let recorded = std::fs::read_to_string(&kh).unwrap();
    for (s, a) in
        [(&jump1, "127.0.0.81"), (&jump2, "127.0.0.82"), (&node, "127.0.0.83"), (&direct, "127.0.0.84")]
    {
        assert!(recorded.contains(&format!("[{a}]:{} {}", s.port, s.host_key())), "{a}: {recorded}");
    }

    // `check --show-ssh` says where each setting came from.
    let cfg_path = tmp.path().join("ssh_config").display().to_string();
    let (code, out, err) = kubeforge_in(&home, &["check", "-i", inv, "--hosts", "cp1", "--show-ssh"], "");
    assert_eq!(code, 0, "{out}{err}");
    let section = out.split("ssh settings (value and where it comes from):\n").nth(1).expect(&out);
    let row = |label: &str| {
        section
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{label}  ")))
            .unwrap_or_else(|| panic!("no {label} row:\n{section}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(row("address"), format!("address 127.0.0.83 {cfg_path}:2 (HostName)"));
    assert_eq!(row("port"), format!("port {} {cfg_path}:3", node.port));
    assert_eq!(row("user"), format!("user root {cfg_path}:15"));
    assert_eq!(row("jump hosts"), format!("jump hosts jump1,jump2 {cfg_path}:4 (ProxyJump)"));
    assert_eq!(row("jump 1 address"), format!("jump 1 address 127.0.0.81 {cfg_path}:6 (HostName)"));
    assert_eq!(row("jump 2 port"), format!("jump 2 port {} {cfg_path}:10", jump2.port));
    assert_eq!(row("config file"), format!("config file {cfg_path} inventory (ssh.configFile)"));
    // The same in JSON, and no `ssh` object without the flag.
    let (code, out, err) =
        kubeforge_in(&home, &["check", "-i", inv, "--hosts", "cp1", "--show-ssh", "--output", "json"], "");
    assert_eq!(code, 0, "{out}{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let settings = doc["hosts"][0]["ssh"]["settings"].as_array().unwrap();
    let hop2 = settings.iter().find(|s| s["hop"] == "jump 2" && s["setting"] == "address").unwrap();
    assert_eq!(hop2["value"], "127.0.0.82");
    assert_eq!(hop2["source"], format!("{cfg_path}:9 (HostName)"));
    let (_, out, _) = kubeforge_in(&home, &["check", "-i", inv, "--hosts", "cp1", "--output", "json"], "");
    assert!(!out.contains("\"ssh\""), "{out}");
    // Without --show-ssh the output is the table alone.
    let (_, out, _) = kubeforge_in(&home, &["check", "-i", inv, "--hosts", "cp1"], "");
    assert!(!out.contains("ssh settings"), "{out}");

    // The inventory wins: a port set there replaces the config's, and this one is wrong.
    let text = std::fs::read_to_string(inv)
        .unwrap()
        .replace("address: only-in-config,", "address: only-in-config, ssh: {port: 1},");
    std::fs::write(inv, text).unwrap();
    let (code, out, _) = kubeforge_in(&home, &["exec", "-i", inv, "--hosts", "w1", "--", "true"], "");
    assert_eq!(code, 1);
    assert!(out.contains("cannot connect to 127.0.0.84:1"), "{out}");
}

#[test]
fn inventory_init_pins_the_host_key_only_with_accept_new_host_keys() {
    if !enabled() {
        return;
    }
    let key = ClientKey::new();
    let mut s = Sshd::start(&key, &["127.0.0.86"], "");
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    // What `vagrant ssh-config` prints, with this sshd's address and the test key.
    let cfg = format!(
        "Host default\n  HostName 127.0.0.86\n  User root\n  Port {}\n  UserKnownHostsFile /dev/null\n  \
         StrictHostKeyChecking no\n  PasswordAuthentication no\n  IdentityFile {}\n  IdentitiesOnly yes\n  \
         LogLevel FATAL\n  PubkeyAcceptedKeyTypes +ssh-rsa\n  HostKeyAlgorithms +ssh-rsa\n",
        s.port,
        key.private().display()
    );
    let connections = || s.log().matches("Connection from").count();

    // Without the flag nothing is contacted and no key is written. (The start-up probe's connection is
    // logged asynchronously: wait for it before counting.)
    let deadline = Instant::now() + Duration::from_secs(5);
    while connections() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = connections();
    let plain = tmp.path().join("plain.yaml");
    let (code, out, err) = kubeforge_in(
        &home,
        &[
            "inventory",
            "init",
            "--from-ssh-config",
            "-",
            "--internal-address",
            "default=10.77.2.1",
            "--out",
            plain.to_str().unwrap(),
        ],
        &cfg,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(connections(), before, "no connection without --accept-new-host-keys");
    assert!(!std::fs::read_to_string(&plain).unwrap().contains("hostKey"));
    // A forwarded-port host (HostName 127.0.0.x) needs its cluster address: without it, a clear refusal.
    let (code, _, err) = kubeforge_in(&home, &["inventory", "init", "--from-ssh-config", "-"], &cfg);
    assert_eq!(code, 2);
    assert!(err.contains("is a loopback address") && err.contains("--internal-address"), "{err}");

    let pinned = tmp.path().join("pinned.yaml");
    let p = pinned.to_str().unwrap();
    let (code, out, err) = kubeforge_in(
        &home,
        &[
            "inventory",
            "init",
            "--from-ssh-config",
            "-",
            "--accept-new-host-keys",
            "--internal-address",
            "default=10.77.2.1",
            "--out",
            p,
        ],
        &cfg,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains(&format!("default: pinned host key {}", s.fingerprint())), "{err}");
    let doc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&pinned).unwrap()).unwrap();
    assert_eq!(doc["hosts"][0]["ssh"]["hostKey"].as_str(), Some(s.host_key().as_str()), "{doc:?}");
    let (code, out, err) = kubeforge_in(&home, &["validate", "-i", p], "");
    assert_eq!(code, 0, "{out}{err}");
    // The written inventory works as it is, and the pin is what is checked: a new host key is refused.
    let (code, out, err) = kubeforge_in(&home, &["exec", "-i", p, "--", "true"], "");
    assert_eq!(code, 0, "{out}{err}");
    assert!(!home.join(".ssh/known_hosts").exists(), "a pinned key needs no known_hosts");
    s.new_host_key();
    let (code, out, _) = kubeforge_in(&home, &["exec", "-i", p, "--", "true"], "");
    assert_eq!(code, 1);
    assert!(out.contains("ssh.hostKey"), "{out}");
}
