//! `kubeforge lab box`: the lab image as a Vagrant box for the libvirt provider (vagrant-libvirt), so the
//! repository's `vagrant/Vagrantfile` can boot the same Debian machines the lab does.
//!
//! A libvirt box is a tar of `metadata.json`, a `Vagrantfile` and the disk `box.img` (qcow2). The lab image
//! has no boot loader (the lab boots its kernel directly), so the box also carries the kernel, the initrd
//! and the image's SSH key, and its own Vagrantfile points vagrant-libvirt at them by their place beside
//! it (Vagrant unpacks a box into a directory of its own and loads that Vagrantfile from there).

use super::Image;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The box's own Vagrantfile: what every machine made from it needs, whatever the project's Vagrantfile
/// says (that one may override any of it).
const BOX_VAGRANTFILE: &str = r#"# The kubeforge lab image (Debian, systemd, OpenSSH, containerd, runc, the CNI plugins, etcd installed
# but disabled) as a box for the libvirt provider. The image has no boot loader: machines boot the kernel
# and initrd beside this file, and get their address from the network's DHCP (`ip=eth0:dhcp`).
Vagrant.configure("2") do |config|
  config.ssh.username = "root"
  config.ssh.private_key_path = File.join(__dir__, "id_ed25519")
  config.ssh.insert_key = false
  # The image has neither rsync nor an NFS client.
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.provider :libvirt do |lv|
    lv.kernel = File.join(__dir__, "vmlinuz")
    lv.initrd = File.join(__dir__, "initrd.img")
    lv.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.firstboot=off ip=eth0:dhcp"
  end
end
"#;

/// Writes the box of `image` to `out` (atomically: a temporary file beside it, then a rename) and returns
/// its size. The disk is converted to qcow2 with `qemu-img`; the tar is not compressed (the disk is most
/// of it, and Vagrant unpacks the box once).
pub fn write_box(image: &Image, suite: &str, out: &Path) -> Result<u64> {
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let work = tempfile::Builder::new()
        .prefix(".kubeforge-box.")
        .tempdir_in(dir)
        .map_err(|e| Error::io(format!("a scratch directory in {}", dir.display()), e))?;
    let raw = image.dir.join("base.raw");
    let disk = work.path().join("box.img");
    let st = Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(&disk)
        .status()
        .map_err(|e| Error::io("running qemu-img (package qemu-utils)", e))?;
    if !st.success() {
        return Err(Error::msg(format!("qemu-img convert {} failed ({st})", raw.display()), None));
    }
    let raw_len =
        std::fs::metadata(&raw).map_err(|e| Error::io(format!("reading {}", raw.display()), e))?.len();
    let gib = raw_len.div_ceil(1 << 30).max(1);
    let metadata = format!("{{\"provider\": \"libvirt\", \"format\": \"qcow2\", \"virtual_size\": {gib}}}\n");
    let tmp_out = work.path().join("box.tar");
    {
        let f = std::fs::File::create(&tmp_out).map_err(|e| Error::io("creating the box", e))?;
        let mut tar = tar::Builder::new(std::io::BufWriter::new(f));
        let mut add_bytes = |name: &str, data: &[u8], mode: u32| -> std::io::Result<()> {
            tar.append_data(&mut header(data.len() as u64, mode), name, data)
        };
        add_bytes("metadata.json", metadata.as_bytes(), 0o644)
            .and_then(|_| {
                add_bytes("Vagrantfile", format!("# Debian {suite}\n{BOX_VAGRANTFILE}").as_bytes(), 0o644)
            })
            .map_err(|e| Error::io("writing the box", e))?;
        let files: [(&str, PathBuf, u32); 4] = [
            ("id_ed25519", image.dir.join("id_ed25519"), 0o600),
            ("vmlinuz", image.dir.join("vmlinuz"), 0o644),
            ("initrd.img", image.dir.join("initrd.img"), 0o644),
            ("box.img", disk.clone(), 0o644),
        ];
        for (name, path, mode) in files {
            let mut f = std::fs::File::open(&path)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let len = f.metadata().map_err(|e| Error::io(format!("reading {}", path.display()), e))?.len();
            tar.append_data(&mut header(len, mode), name, &mut f)
                .map_err(|e| Error::io("writing the box", e))?;
        }
        tar.into_inner()
            .and_then(|mut w| std::io::Write::flush(&mut w).map(|_| w))
            .map_err(|e| Error::io("writing the box", e))?;
    }
    let size = std::fs::metadata(&tmp_out).map_err(|e| Error::io("reading the box", e))?.len();
    std::fs::rename(&tmp_out, out).map_err(|e| Error::io(format!("writing {}", out.display()), e))?;
    Ok(size)
}

/// A tar header for a regular file of `len` bytes (no timestamp: the same image gives the same box).
fn header(len: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(len);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_cksum();
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The box holds what vagrant-libvirt reads (metadata.json, the qcow2 disk, the Vagrantfile) and what
    /// a machine of the lab image needs to boot and be reached (kernel, initrd, key, mode 0600).
    #[test]
    fn a_box_holds_metadata_disk_kernel_and_key() {
        if which_qemu_img().is_none() {
            eprintln!("skipped: no qemu-img");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("image");
        std::fs::create_dir_all(&img).unwrap();
        let f = std::fs::File::create(img.join("base.raw")).unwrap();
        f.set_len(3 << 30).unwrap(); // sparse: 3 GiB
        for (n, c) in [("vmlinuz", "kernel"), ("initrd.img", "initrd"), ("id_ed25519", "key")] {
            std::fs::write(img.join(n), c).unwrap();
        }
        let out = tmp.path().join("out/kubeforge-debian.box");
        write_box(&Image { dir: img, built: false }, "trixie", &out).unwrap();
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(std::fs::File::open(&out).unwrap());
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mode = e.header().mode().unwrap();
            let mut text = String::new();
            if name != "box.img" {
                std::io::Read::read_to_string(&mut e, &mut text).unwrap();
            }
            match name.as_str() {
                "metadata.json" => {
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(v["provider"], "libvirt");
                    assert_eq!(v["format"], "qcow2");
                    assert_eq!(v["virtual_size"], 3);
                }
                "Vagrantfile" => assert!(text.contains("File.join(__dir__, \"vmlinuz\")"), "{text}"),
                "id_ed25519" => assert_eq!((text.as_str(), mode), ("key", 0o600)),
                _ => {}
            }
            names.push(name);
        }
        assert_eq!(names, ["metadata.json", "Vagrantfile", "id_ed25519", "vmlinuz", "initrd.img", "box.img"]);
        let leftovers: Vec<_> =
            std::fs::read_dir(tmp.path().join("out")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, ["kubeforge-debian.box"], "no scratch directory left");
    }

    fn which_qemu_img() -> Option<PathBuf> {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|d| Path::new(d).join("qemu-img"))
            .find(|p| p.exists())
    }
}
