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
  local c0 c1
  c0=$(cpu_ticks)
  local out
  out=$(mktemp -t kf-stage-out.XXXXXX)
  if [ -t 1 ]; then
    # On a terminal the command keeps it (progress bars, prompts); nothing is collected.
    "$@"; rc=$?
    : > "$out"
  else
    "$@" 2>&1 | tee "$out"; rc=${PIPESTATUS[0]}
  fi
  t1=$(date +%s%N)
  c1=$(cpu_ticks)
  # A failed stage's test failures are printed again at the end (the summary), where a reader of the
  # log's tail finds them; its whole output stays in the file.
  if [ $rc -ne 0 ]; then
    {
      echo "--- $name: failed ($rc); whole output in $out"
      stage_failures "$out"
    } >> "$KF_STAGE_FAILURES"
  else
    rm -f "$out"
  fi
  printf '%-32s %8ss  %-10s machine CPU busy %s\n' "$name" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", (b-a)/1e9}')" \
    "$([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)")" "$(cpu_busy "$c0" "$c1")" | tee -a "$KF_STAGE_LOG"
  return $rc
}

# cpu_ticks: the machine's busy and idle CPU ticks so far (/proc/stat); cpu_busy A B: the busy share
# between two readings, all cores and every process (stages that run side by side share it).
cpu_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat; }
cpu_busy() {
  awk -v a="$1" -v b="$2" 'BEGIN{split(a,x," "); split(b,y," "); bu=y[1]-x[1]; id=y[2]-x[2];
    if (bu+id>0) printf "%.0f%%", 100*bu/(bu+id); else printf "-"}'
}

KF_STAGE_FAILURES=${KF_STAGE_FAILURES:-$(mktemp -t kf-stage-failures.XXXXXX)}
export KF_STAGE_FAILURES

# stage_failures FILE: the failing tests' messages in a stage's output (cargo test's panics and its
# `failures:` list; cargo-nextest's captured output of a failed test and its FAIL lines), or the output's
# last 40 lines when it has none.
stage_failures() {
  local digest
  digest=$(awk '
    /^---- .* stdout ----$/ { keep = 60 }
    /^--- STD(OUT|ERR): / { keep = 60 }
    /^ *(FAIL|SIGSEGV|SIGABRT|TIMEOUT) \[/ { print; next }
    /panicked at / { keep = (keep > 30 ? keep : 30) }
    /^failures:$/ { keep = 40 }
    keep > 0 { print; keep-- }
  ' "$1" | head -300)
  if [ -n "$digest" ]; then echo "$digest"; else tail -40 "$1"; fi
}

stage_summary() {
  if [ -s "$KF_STAGE_FAILURES" ]; then
    echo
    echo "=== failures"
    cat "$KF_STAGE_FAILURES"
  fi
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
