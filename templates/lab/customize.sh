#!/bin/sh
# mmdebstrap customize hook for kubeforge lab images. $1 = the root file system being built.
# KF_PUBKEY: the lab's client public key; KF_OUT: where the kernel, initrd and host key are copied.
set -eu
R=$1
chroot "$R" useradd -m -s /bin/bash -G sudo lab
echo 'lab ALL=(ALL) NOPASSWD:ALL' > "$R/etc/sudoers.d/lab"
chmod 0440 "$R/etc/sudoers.d/lab"
for home in root home/lab; do
  mkdir -p "$R/$home/.ssh"
  cp "$KF_PUBKEY" "$R/$home/.ssh/authorized_keys"
  chmod 700 "$R/$home/.ssh"
  chmod 600 "$R/$home/.ssh/authorized_keys"
done
chroot "$R" chown -R lab:lab /home/lab/.ssh
echo '/dev/vda / ext4 rw,x-systemd.growfs 0 1' > "$R/etc/fstab"
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' > "$R/etc/hosts"
# Each VM gets its identity from the kernel command line (systemd.hostname=, systemd.machine_id=, ip=).
: > "$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id"
chroot "$R" systemctl enable systemd-networkd.service systemd-network-generator.service >/dev/null 2>&1
# Installed but disabled: kubeforge configures them.
chroot "$R" systemctl disable etcd.service containerd.service >/dev/null 2>&1 || true
mkdir -p "$R/etc/ssh/sshd_config.d" "$R/etc/systemd/journald.conf.d" "$R/usr/local/bin"
printf 'UseDNS no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n' > "$R/etc/ssh/sshd_config.d/kubeforge-lab.conf"
printf '[Journal]\nStorage=volatile\n' > "$R/etc/systemd/journald.conf.d/kubeforge-lab.conf"
cp "$R"/boot/vmlinuz-* "$KF_OUT/vmlinuz"
cp "$R"/boot/initrd.img-* "$KF_OUT/initrd.img"
cp "$R/etc/ssh/ssh_host_ed25519_key.pub" "$KF_OUT/host_key.pub"
