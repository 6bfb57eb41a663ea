# Shared helpers for the project scripts: stage timing and idempotent package installs.
# Sourced, not run.

KF_STAGE_LOG=${KF_STAGE_LOG:-$(mktemp -t kf-stages.XXXXXX)}
export KF_STAGE_LOG

# stage NAME CMD...: runs CMD, prints a banner and its wall time, records it for the summary.
stage() {
  local name=$1; shift
  local t0 t1 rc
  echo
  echo "=== stage: $name ($(date -u +%H:%M:%S))"
  t0=$(date +%s%N)
  "$@"; rc=$?
  t1=$(date +%s%N)
  printf '%-32s %8ss  %s\n' "$name" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", (b-a)/1e9}')" \
    "$([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)")" | tee -a "$KF_STAGE_LOG"
  return $rc
}

stage_summary() {
  echo
  echo "=== per-stage timings"
  cat "$KF_STAGE_LOG"
}

# apt_install PKG...: installs the packages that are missing (root; runs apt-get update once per process).
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ -z "${KF_APT_UPDATED:-}" ]; then
    apt-get update -qq || return 1
    KF_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
