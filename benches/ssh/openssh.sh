#!/usr/bin/env bash
# The workload with plain OpenSSH, all hosts in parallel (xargs -P N): per host one ControlMaster
# connection, then every operation as a multiplexed session: mkdir, the payload (`cat` into a temporary
# file, chmod, rename), 10 rendered files the same way, 4 commands; then the master is closed.
# Templates are rendered locally with bash string substitution.
# usage: openssh.sh N   (run by run.sh; needs BENCH_DIR, TEMPLATES, PAYLOAD in the environment)
set -euo pipefail
N=${1:?N}
export SSH_CFG=$BENCH_DIR/ssh_config CP_DIR=$BENCH_DIR/cp
mkdir -p "$CP_DIR"

render() {  # render TEMPLATE NAME IP INDEX ROOT
  local t
  t=$(<"$1")
  t=${t//'{{ node_name }}'/$2}; t=${t//'{{ node_ip }}'/$3}; t=${t//'{{ node_index }}'/$4}
  t=${t//'{{ root }}'/$5}; t=${t//'{{ cluster_name }}'/bench}
  printf '%s\n' "$t"
}

one_host() {
  set -euo pipefail
  local name addr port root index sock t f
  IFS=$'\t' read -r name addr port root index < <(grep -v '^#' "$BENCH_DIR/hosts.tsv" | sed -n "${1}p")
  sock=$CP_DIR/$name
  ssh -F "$SSH_CFG" -o ControlMaster=yes -o ControlPersist=yes -o ControlPath="$sock" -fN "$name"
  local S=(ssh -F "$SSH_CFG" -o ControlMaster=no -o ControlPath="$sock" "$name")
  "${S[@]}" "mkdir -p $root/usr/local/bin $root/etc/kube $root/var/lib/kube"
  f=$root/usr/local/bin/payload.bin
  "${S[@]}" "cat > $f.tmp && chmod 0755 $f.tmp && mv $f.tmp $f" < "$PAYLOAD"
  for t in "$TEMPLATES"/*.conf.j2; do
    f=$root/etc/kube/$(basename "$t" .j2)
    render "$t" "$name" "$addr" "$index" "$root" | "${S[@]}" "cat > $f.tmp && chmod 0644 $f.tmp && mv $f.tmp $f"
  done
  "${S[@]}" "stat -c %s $root/usr/local/bin/payload.bin" > /dev/null
  "${S[@]}" "cat $root/etc/kube/*.conf | wc -c" > /dev/null
  "${S[@]}" "uname -r" > /dev/null
  "${S[@]}" "touch $root/var/lib/kube/started"
  ssh -F "$SSH_CFG" -o ControlPath="$sock" -O exit "$name" 2> /dev/null
}
export -f one_host render
seq 1 "$N" | xargs -P "$N" -I{} bash -c 'one_host "$@"' _ {}
