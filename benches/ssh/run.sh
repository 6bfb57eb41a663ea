#!/usr/bin/env bash
# SSH engine benchmark (not a test): the same workload on N loopback "hosts" done by
#   kubeforge  - the real engine (SshTransport + Executor + Upload), benches/ssh_engine.rs
#   ansible    - ansible-core, pipelining on, forks=N (its default ssh_args: ControlPersist, -C)
#   openssh    - plain OpenSSH, all hosts in parallel, one ControlMaster per host, a session per step
# Workload per host: 1 command (mkdir), push one 50 MB file, render and push 10 small files, 4 commands.
# Every host is its own sshd (own host key) on 127.0.90.<i>, with its own root directory on tmpfs.
# Prints one table: medians, ratios, peak RSS, and the targets (N=50: >= 5x faster than ansible,
# within 1.3x of the OpenSSH floor).
#
# usage: benches/ssh/run.sh              full: N = 1 10 50, 3 runs each
#        QUICK=1 benches/ssh/run.sh      smoke: N = 1 10, 1 run
# environment (all optional): NS="1 10 50"  RUNS=3  TOOLS="kubeforge ansible openssh"  PAYLOAD_MB=50
#   BENCH_DIR=/tmp/kubeforge-ssh-bench (keys, configs, venv, CSV, logs; kept for the next run)
#   HOSTS_ROOT=/dev/shm/kubeforge-ssh-bench (the hosts' files; removed at exit)
#   BENCH_NET=127.0.90 (host i listens on $BENCH_NET.i)  BENCH_PORT=22922
# Installs what is missing: openssh-server/client (apt-get), ansible-core (pip, in a venv in BENCH_DIR).
# Every sshd it starts is stopped at exit (by recorded PID), with its sessions.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
if [[ -n ${QUICK:-} && ${QUICK:-} != 0 ]]; then NS=${NS:-"1 10"}; RUNS=${RUNS:-1}; fi
NS=${NS:-"1 10 50"}
RUNS=${RUNS:-3}
TOOLS=${TOOLS:-"kubeforge ansible openssh"}
PAYLOAD_MB=${PAYLOAD_MB:-50}
BENCH_DIR=${BENCH_DIR:-/tmp/kubeforge-ssh-bench}
HOSTS_ROOT=${HOSTS_ROOT:-/dev/shm/kubeforge-ssh-bench}
BENCH_NET=${BENCH_NET:-127.0.90}
BENCH_PORT=${BENCH_PORT:-22922}
[[ $BENCH_NET =~ ^127\.[0-9]+\.[0-9]+$ ]] || { echo "BENCH_NET must be inside 127.0.0.0/8" >&2; exit 2; }
MAXN=0; for n in $NS; do (( n > MAXN )) && MAXN=$n; done
(( MAXN <= 250 )) || { echo "at most 250 hosts" >&2; exit 2; }
PY=/usr/bin/python3
export BENCH_DIR TEMPLATES=$HERE/templates PAYLOAD=$HOSTS_ROOT/payload.bin
log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }

# --- tools -----------------------------------------------------------------------------------------
if [[ ! -x /usr/sbin/sshd || ! -x /usr/bin/ssh || ! -x $PY ]]; then
  log "installing openssh-server, openssh-client, python3"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client python3 python3-venv >/dev/null
fi
mkdir -p "$BENCH_DIR"/{keys,sshd,logs,acp,cp,ansible-local} "$HOSTS_ROOT"
VENV=$BENCH_DIR/venv
if [[ " $TOOLS " == *" ansible "* && ! -x $VENV/bin/ansible-playbook ]]; then
  log "installing ansible-core into $VENV"
  if ! $PY -m venv "$VENV" 2>/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$VENV"; $PY -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q ansible-core
fi
KF_BIN=
if [[ " $TOOLS " == *" kubeforge "* ]]; then
  log "building the kubeforge engine benchmark (cargo bench --no-run, bench profile)"
  KF_BIN=$(cd "$REPO" && cargo bench --bench ssh_engine --no-run --message-format=json 2>/dev/null \
    | $PY -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "ssh_engine" and m.get("executable"):
        print(m["executable"])')
  [[ -x $KF_BIN ]] || { echo "could not build benches/ssh_engine.rs" >&2; exit 1; }
fi

# --- CPU accounting: one cpuacct cgroup for the whole test bed (below the one we are in) ----------
CG=
CG_PARENT=/sys/fs/cgroup/cpuacct$(awk -F: '$2=="cpuacct"{print $3}' /proc/self/cgroup 2>/dev/null)
CG_PARENT=${CG_PARENT%/}
if [[ -w $CG_PARENT ]] && mkdir -p "$CG_PARENT/kubeforge-ssh-bench-$$" 2>/dev/null; then
  CG=$CG_PARENT/kubeforge-ssh-bench-$$
  echo $$ > "$CG/cgroup.procs"
fi

# --- cleanup: every sshd we started (and its sessions), every control master, the host files -------
SSHD_PIDS=()
descendants() { local c; for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do echo "$c"; descendants "$c"; done; }
close_masters() {
  local s
  for s in "$BENCH_DIR"/acp/* "$BENCH_DIR"/cp/*; do
    [[ -S $s ]] || continue
    timeout 5 ssh -o ControlPath="$s" -O exit x >/dev/null 2>&1 || true
    rm -f "$s"
  done
}
cleanup() {
  set +e
  close_masters
  local p kids=()
  for p in "${SSHD_PIDS[@]}"; do kids+=($(descendants "$p")); done
  for p in "${SSHD_PIDS[@]}"; do
    # only a process that still is our sshd (same config file on its command line)
    tr '\0' ' ' < /proc/"$p"/cmdline 2>/dev/null | grep -qF -- "-f $BENCH_DIR/sshd/" && kill "$p" 2>/dev/null
  done
  for p in "${kids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${SSHD_PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done
  rm -rf "${HOSTS_ROOT:?}"
  if [[ -n $CG ]]; then echo $$ > "$CG_PARENT/cgroup.procs"; rmdir "$CG" 2>/dev/null; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- hosts -------------------------------------------------------------------------------------------
KEY=$BENCH_DIR/keys/id_ed25519
[[ -f $KEY ]] || ssh-keygen -q -t ed25519 -N '' -C kubeforge-ssh-bench -f "$KEY"
cp "$KEY.pub" "$BENCH_DIR/sshd/authorized_keys"
mkdir -p /run/sshd   # privilege separation directory sshd insists on
: > "$BENCH_DIR/known_hosts"
printf '#name\taddress\tport\troot\tindex\n' > "$BENCH_DIR/hosts.tsv"
INV=$BENCH_DIR/inventory.ini
echo "[targets]" > "$INV"
{
  echo "Host h*"
  echo "  User root"
  echo "  Port $BENCH_PORT"
  echo "  IdentityFile $KEY"
  echo "  IdentitiesOnly yes"
  echo "  UserKnownHostsFile $BENCH_DIR/known_hosts"
  echo "  StrictHostKeyChecking yes"
  echo "  BatchMode yes"
  echo "  LogLevel ERROR"
} > "$BENCH_DIR/ssh_config"
log "starting $MAXN sshd hosts on $BENCH_NET.1..$BENCH_NET.$MAXN port $BENCH_PORT"
for i in $(seq 1 "$MAXN"); do
  h=$(printf 'h%02d' "$i"); a=$BENCH_NET.$i; d=$BENCH_DIR/sshd/$h; r=$HOSTS_ROOT/$h
  mkdir -p "$d" "$r"
  [[ -f $d/host_key ]] || ssh-keygen -q -t ed25519 -N '' -f "$d/host_key"
  cat > "$d/sshd_config" <<EOF
ListenAddress $a:$BENCH_PORT
HostKey $d/host_key
PidFile none
PermitRootLogin yes
PubkeyAuthentication yes
AuthorizedKeysFile $BENCH_DIR/sshd/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
MaxSessions 100
MaxStartups 200:30:400
LogLevel ERROR
Subsystem sftp internal-sftp
# A stock non-interactive ~/.bashrc returns at once; this machine's root .bashrc runs pyenv init, which
# bash skips for ssh commands when SHLVL >= 1.
SetEnv SHLVL=1
EOF
  /usr/sbin/sshd -D -f "$d/sshd_config" -E "$BENCH_DIR/logs/sshd-$h.log" </dev/null >/dev/null 2>&1 &
  SSHD_PIDS+=($!)
  echo "[$a]:$BENCH_PORT $(cut -d' ' -f1,2 "$d/host_key.pub")" >> "$BENCH_DIR/known_hosts"
  printf 'Host %s\n  HostName %s\n' "$h" "$a" >> "$BENCH_DIR/ssh_config"
  printf '%s\t%s\t%s\t%s\t%s\n' "$h" "$a" "$BENCH_PORT" "$r" "$i" >> "$BENCH_DIR/hosts.tsv"
  echo "$h ansible_host=$a node_index=$i root=$r ansible_remote_tmp=$r/.ansible/tmp" >> "$INV"
done
printf '[defaults]\n' > "$BENCH_DIR/ansible.cfg"   # explicit and empty: no stray ansible.cfg is read
cat >> "$INV" <<EOF

[targets:vars]
ansible_user=root
ansible_port=$BENCH_PORT
ansible_ssh_private_key_file=$KEY
ansible_ssh_common_args=-o UserKnownHostsFile=$BENCH_DIR/known_hosts -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes
ansible_python_interpreter=/usr/bin/python3
payload=$PAYLOAD
templates=$TEMPLATES
EOF
head -c $((PAYLOAD_MB * 1048576)) /dev/urandom > "$PAYLOAD"   # incompressible, like a release binary
for i in $(seq 1 "$MAXN"); do
  h=$(printf 'h%02d' "$i")
  for t in $(seq 1 100); do
    timeout 5 ssh -F "$BENCH_DIR/ssh_config" -o ControlPath=none "$h" true 2>/dev/null && break
    (( t < 100 )) || { echo "$h ($BENCH_NET.$i:$BENCH_PORT) does not answer; see $BENCH_DIR/logs/sshd-$h.log" >&2; exit 1; }
    sleep 0.1
  done
done

# --- the runs ----------------------------------------------------------------------------------------
run_tool() {  # run_tool TOOL N: sets CMD to the command that does the workload on h01..hN
  case $1 in
    kubeforge) CMD=("$KF_BIN" --hosts "$BENCH_DIR/hosts.tsv" --limit "$2" --payload "$PAYLOAD"
                 --templates "$TEMPLATES" --identity "$KEY" --known-hosts "$BENCH_DIR/known_hosts") ;;
    ansible) CMD=(env ANSIBLE_PIPELINING=True ANSIBLE_FORKS="$2" ANSIBLE_SSH_CONTROL_PATH_DIR="$BENCH_DIR/acp"
               ANSIBLE_CONFIG="$BENCH_DIR/ansible.cfg" ANSIBLE_LOCAL_TEMP="$BENCH_DIR/ansible-local"
               ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0
               "$VENV/bin/ansible-playbook" -i "$INV" -l "targets[0:$(($2 - 1))]" "$HERE/playbook.yml") ;;
    openssh) CMD=("$HERE/openssh.sh" "$2") ;;
  esac
}
reset_hosts() {
  close_masters
  local d
  for d in "$HOSTS_ROOT"/h*; do find "$d" -mindepth 1 -delete; done
}
CSV=$BENCH_DIR/results-$(date +%Y%m%d-%H%M%S).csv
log "runs: N in {$NS}, $RUNS run(s) each, tools: $TOOLS; CSV: $CSV"
for n in $NS; do
  for rep in $(seq 1 "$RUNS"); do
    for tool in $TOOLS; do   # interleaved, so drifting background load spreads over every tool
      reset_hosts
      sync; sleep 1
      run_tool "$tool" "$n"
      $PY "$HERE/bench.py" measure --csv "$CSV" --tool "$tool" --n "$n" --rep "$rep" --cgroup "$CG" \
        --log "$BENCH_DIR/logs/$tool-$n-$rep.log" -- "${CMD[@]}" || true
      $PY "$HERE/bench.py" verify --csv "$CSV" --hosts "$BENCH_DIR/hosts.tsv" --n "$n" --payload "$PAYLOAD" \
        --templates "$TEMPLATES" || log "$tool N=$n run $rep: verification FAILED (log: $BENCH_DIR/logs/$tool-$n-$rep.log)"
    done
  done
done
reset_hosts
echo
echo "SSH engine benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)), kernel $(uname -r)"
echo "N in {$NS}, median of $RUNS run(s); payload ${PAYLOAD_MB} MB + 10 rendered files + 5 commands per host"
echo
$PY "$HERE/bench.py" table --csv "$CSV" | tee "$BENCH_DIR/last-table.md"
