#!/usr/bin/env bash
# Host tools for the Vagrant tier on Debian 12 (bookworm), as root. Idempotent.
# libvirt's daemon, its QEMU driver and client, dnsmasq (the libvirt network's DHCP), Vagrant and
# vagrant-libvirt, all from Debian. No service is started: Debian's init scripts are held off while the
# packages install (policy-rc.d), because the test runs libvirtd itself, inside a network namespace.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh
[ "$(id -u)" -eq 0 ] || { echo "install-host-deps.sh must run as root" >&2; exit 1; }
guard=/usr/sbin/policy-rc.d
made_guard=0
if [ ! -e "$guard" ]; then
  printf '#!/bin/sh\n# kubeforge: no service starts while packages install\nexit 101\n' > "$guard"
  chmod +x "$guard"
  made_guard=1
fi
trap '[ $made_guard = 1 ] && rm -f "$guard"' EXIT
apt_install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients dnsmasq-base vagrant vagrant-libvirt
# The QEMU driver resolves its built-in user and group before it reads qemu.conf (which makes it run the
# VMs as root here); without them libvirtd stops at "Failed to parse user 'libvirt-qemu'".
getent group kvm >/dev/null || groupadd --system kvm
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null \
  || useradd --system --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin -g kvm libvirt-qemu
echo "vagrant tier tools: $(vagrant --version), $(libvirtd --version), $(vagrant plugin list 2>/dev/null | grep libvirt || echo 'vagrant-libvirt MISSING')"
