#!/usr/bin/env bash
# Host tools for `kubeforge lab` on Debian 12 (bookworm), as root. Idempotent.
# The machine's qemu-utils comes from bookworm-backports, which breaks bookworm's qemu-system-common, so
# qemu-system-x86 (and mmdebstrap) are taken from bookworm-backports too. The archive URL is read from the
# machine's own apt sources; nothing else is contacted.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "install-host-deps.sh must run as root" >&2; exit 1; }
need=()
for t in qemu-system-x86_64 mmdebstrap mke2fs qemu-img ssh ssh-keygen ip socat; do command -v "$t" >/dev/null || need+=("$t"); done
[ ${#need[@]} -eq 0 ] && { echo "lab host tools present"; exit 0; }
mirror=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v -- '-security' | grep '/debian/\?$' | head -n1)
[ -n "$mirror" ] || mirror=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v -- '-security' | head -n1)
[ -n "$mirror" ] || { echo "cannot find the Debian archive in the apt sources" >&2; exit 1; }
src=/etc/apt/sources.list.d/kubeforge-lab-backports.sources
if [ ! -f "$src" ]; then
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror" > "$src"
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils mmdebstrap >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends socat e2fsprogs openssh-client iproute2 openssl >/dev/null
echo "lab host tools installed: $(qemu-system-x86_64 --version | head -n1), mmdebstrap $(mmdebstrap --version | awk '{print $2}')"
