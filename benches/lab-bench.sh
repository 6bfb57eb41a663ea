# Sourced by the lab benchmarks (benches/join.sh, benches/upgrade.sh, benches/maintain.sh) after they set LAB: host tools, the
# kubeforge binary ($KF), the test bundle ($BUNDLE_DIR) and the lab torn down on exit (unless KEEP_LAB=1).
BUNDLE_DIR=${BUNDLE_DIR:-$HOME/.cache/kubeforge/test-bundle}
bash tests/lab/install-host-deps.sh >/dev/null
# KF=path uses that kubeforge binary instead of a fresh release build (round trips and bytes do not depend on
# how kubeforge was built; an HA cluster's nodes get the kubeforge-apilb found beside it).
if [ -z "${KF:-}" ]; then
  cargo build --release -p kubeforge -p kubeforge-apilb -q
  KF=$PWD/target/release/kubeforge
fi
[ -f "$BUNDLE_DIR/manifest.json" ] || bash tests/bundle/build.sh "$BUNDLE_DIR" >/dev/null
cleanup() { [ "${KEEP_LAB:-0}" = 1 ] || "$KF" lab down --name "$LAB" >/dev/null 2>&1 || true; }
trap cleanup EXIT
