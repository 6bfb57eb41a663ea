//! `kubeforge rotate service-account-key`: a new key for service-account tokens with the API up the whole
//! time, as the stages of [`crate::workflow::ROTATE_SERVICE_ACCOUNT_KEY`] on one [`Session`].
//!
//! The keys and the rotation's record live in the PKI store ([`crate::sa_key`]): the record (old key, new
//! key, step, and once the new key signs everywhere, until when old tokens may live) is written before each
//! step is rolled out, and what every path renders into the control planes' `sa.key` and `sa.pub` (`apply`
//! too) follows it. A step is rolled out by the apply engine itself, as for the encryption key: the
//! `control-plane` phase on one control plane at a time (the files written, kube-apiserver and, when
//! `sa.key` changes, kube-controller-manager restarted, `/readyz` awaited), then a gate through another
//! control plane. The steps:
//! 1. `trust-both`: `sa.pub` holds both public keys (one PEM file with several keys, which kube-apiserver's
//!    `--service-account-key-file` reads), the old key still signs;
//! 2. `sign-new`: the new key signs (`--service-account-signing-key-file` and the controller-manager's
//!    `--service-account-private-key-file` both point at `sa.key`); when the last control plane is done, the
//!    time and the bound until which a token the old key signed may be valid are recorded;
//! 3. `wait`: before that bound the run stops, saying when to run again (no process sleeps for an hour); a
//!    run after it goes on. The bound comes from the rendered apiserver flags ([`crate::sa_key::token_wait`]);
//! 4. `drop-old`: the new public key alone; then the store switches to the new pair (the old key kept in
//!    `secrets/retired/`), removing the record last.
//!
//! Legacy token Secrets (`kubernetes.io/service-account-token`) never expire: those the old key signed stop
//! working at `drop-old`, and the preview says so.

use super::{Clock, RotateOptions, Rotator};
use crate::model::ClusterModel;
use crate::prompt::Consent;
use crate::sa_key::{self, SaRotation, SaStep};
use crate::session::Session;
use crate::workflow::ROTATE_SERVICE_ACCOUNT_KEY as WF;
use crate::{Error, Result};
use std::time::{Duration, Instant};

/// Every legacy token Secret (`type: kubernetes.io/service-account-token`) as `NAMESPACE/NAME HEADER`: the
/// token's JWS header (base64url JSON, which names the signing key's id), cut from the token on the control
/// plane so that no token leaves it.
const LEGACY_TOKENS: &str = r#"out=$(kubectl --kubeconfig /etc/kubernetes/admin.conf --request-timeout=60s \
  get secrets -A --field-selector type=kubernetes.io/service-account-token \
  -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name} {.data.token}{"\n"}{end}') || exit 1
printf '%s\n' "$out" | while read -r name tok; do
  [ -n "$name" ] || continue
  printf '%s %s\n' "$name" "$(printf '%s' "$tok" | base64 -d 2>/dev/null | cut -d. -f1)"
done"#;

/// The legacy token Secrets per signing key id (`?` when a header names none or cannot be read).
fn parse_legacy_tokens(out: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    use base64::Engine;
    let mut m: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (name, header) = line.split_once(' ').unwrap_or((line, ""));
        let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header.trim_end_matches('='))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|h| h["kid"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "?".into());
        m.entry(kid).or_default().push(name.to_owned());
    }
    m
}

/// The preview's line on legacy token Secrets: how many the old key signed (they stop working when it goes),
/// by name.
fn legacy_line(tokens: &Result<std::collections::BTreeMap<String, Vec<String>>>, old: &str) -> String {
    match tokens {
        Err(e) => format!(
            "legacy token Secrets could not be read ({e}); any the old key signed stop working when it goes"
        ),
        Ok(m) => {
            let signed: Vec<&String> = m.get(old).into_iter().flatten().collect();
            let others: usize = m.iter().filter(|(k, _)| k.as_str() != old).map(|(_, v)| v.len()).sum();
            if signed.is_empty() {
                format!("legacy token Secrets signed with the old key: none ({others} with other keys)")
            } else {
                let shown: Vec<&str> = signed.iter().take(10).map(|s| s.as_str()).collect();
                format!(
                    "legacy token Secrets signed with the old key: {} ({}{}) STOP WORKING when it goes: create them again after the rotation",
                    signed.len(),
                    shown.join(", "),
                    if signed.len() > 10 { ", ..." } else { "" }
                )
            }
        }
    }
}

/// What a step changes on a control plane.
const SA_FILES: &[&str] = &["/etc/kubernetes/pki/sa.key", "/etc/kubernetes/pki/sa.pub"];

/// How a run ended.
enum Outcome {
    /// `--dry-run`, or nothing to do.
    Previewed,
    /// The new key signs everywhere; the old one stays trusted until this time (seconds since the epoch).
    Waiting { until: u64, old: String, new: String },
    /// The rotation finished.
    Finished { old: String, new: String, retired: String },
}

/// `kubeforge rotate service-account-key` in a session (fake transports in tests).
pub fn service_account_key_in(session: &Session, options: &RotateOptions) -> Result<i32> {
    let model = session.model();
    let started = Instant::now();
    let result = session.block_on(run_stages(session, &model, options));
    eprint!("{}", crate::apply::host_stats(&session.transports));
    match result? {
        Outcome::Previewed => {}
        Outcome::Waiting { until, old, new } => session.say(format!(
            "rotate service-account-key: {} signs with the new key {new} and still trusts the old key {old}\n  tokens the old key signed may be valid until {} ({})\n  run `kubeforge rotate service-account-key` again after then to drop the old key (a run before then changes nothing)\n",
            model.name,
            sa_key::show_time(until),
            left(until, sa_key::epoch(options.clock.now())),
        )),
        Outcome::Finished { old, new, retired } => session.say(format!(
            "rotate service-account-key: {} now signs and verifies tokens with key {new} alone\n  old key {old} kept in {retired}\n  wall time {:.0}s\n",
            model.name,
            started.elapsed().as_secs_f64()
        )),
    }
    Ok(0)
}

/// `in 42m` or `passed`.
fn left(until: u64, now: u64) -> String {
    if now >= until {
        "passed".into()
    } else {
        format!("in {}", humantime::format_duration(Duration::from_secs(until - now)))
    }
}

/// Records `rotation` at `step`, then rolls that step's files out to every control plane, one at a time,
/// each gated.
async fn roll_out(r: &Rotator<'_>, rotation: &mut SaRotation, step: SaStep) -> Result<()> {
    let stage = match step {
        SaStep::TrustBoth => "trust-both",
        SaStep::SignNew => "sign-new",
        SaStep::DropOld => "drop-old",
    };
    // An interrupt between two steps stops before the next step is recorded.
    r.session.boundary(&WF, stage)?;
    rotation.step = step;
    sa_key::record(&r.store, rotation)?;
    r.session.enter(&WF, stage);
    eprintln!(
        "[rotate] {stage}: {}",
        match step {
            SaStep::TrustBoth => "sa.pub trusts the old and the new key, the old key signs",
            SaStep::SignNew => "the new key signs, both are trusted",
            SaStep::DropOld => "the new key alone",
        }
    );
    r.each_control_plane(&WF, stage).await
}

async fn run_stages(session: &Session, model: &ClusterModel, options: &RotateOptions) -> Result<Outcome> {
    let (cps, verified, store) = super::identity(session, model, &WF, false).await?;
    let first = model.control_planes().next().expect("identity refuses an inventory without a control plane");
    let keys = sa_key::load(&store)?;
    let r = Rotator {
        session,
        model: model.clone(),
        options,
        verified,
        store,
        command: WF.command,
        files: SA_FILES,
        phases: super::CONTROL_PLANE_PHASE,
        material: None,
    };

    session.enter(&WF, "health");
    let api = r.api_host(&[])?;
    let problems = r.problems(&api).await?;
    if !problems.is_empty() {
        return Err(Error::msg(
            format!("the cluster is not healthy, nothing was changed: {}", problems.join("; ")),
            Some("fix these first (`kubeforge status` shows the details); a rotation restarts every apiserver and starts from a healthy cluster"),
        ));
    }
    let t = session.transport(&api)?;
    let cmd = crate::transport::Command::shell(LEGACY_TOKENS).sudo();
    let legacy = crate::plan::run_checked(t.as_ref(), "read the legacy token Secrets' key ids", &cmd)
        .await
        .map(|o| parse_legacy_tokens(&o.stdout_str()))
        .map_err(|e| super::failed(&api, e, None));
    eprintln!("[rotate] healthy: every apiserver ready, every etcd member healthy");

    session.enter(&WF, "preview");
    let resuming = keys.rotation.is_some();
    let mut rotation = sa_key::plan_rotation(&keys)?;
    let (old, new) = (sa_key::key_id(&rotation.old)?, sa_key::key_id(&rotation.new)?);
    // A dry run before any rotation makes a key only to show its kind: its id would not be the one used.
    let shown_new = if resuming || options.consent != Consent::Preview {
        format!("{new} ({})", sa_key::algorithm(&rotation.new)?)
    } else {
        format!("a new {} key", sa_key::algorithm(&rotation.new)?)
    };
    let (wait, why) = sa_key::token_wait(&crate::render::apiserver_flags(model, first));
    let now = sa_key::epoch(options.clock.now());
    let stands = match (&keys.rotation, rotation.old_tokens_valid_until) {
        (None, _) => "a new rotation".to_string(),
        (Some(_), Some(until)) => format!(
            "resuming: every control plane signs with the new key since {}; tokens the old key signed may be valid until {} ({})",
            sa_key::show_time(rotation.signing_new_since.unwrap_or(until)),
            sa_key::show_time(until),
            left(until, now)
        ),
        (Some(rec), None) => format!("resuming at {}", rec.step.name()),
    };
    let steps: Vec<&str> = [SaStep::TrustBoth, SaStep::SignNew, SaStep::DropOld]
        .into_iter()
        .filter(|s| *s >= rotation.step)
        .map(|s| match s {
            SaStep::SignNew if options.drop_old_now && rotation.old_tokens_valid_until.is_some() => {
                "wait (skipped)"
            }
            SaStep::SignNew if options.drop_old_now => "sign-new",
            SaStep::SignNew if rotation.old_tokens_valid_until.is_some() => "wait",
            SaStep::SignNew => "sign-new, wait",
            s => s.name(),
        })
        .collect();
    let (wait_line, pods_line) = if options.drop_old_now {
        (
            format!("none (--drop-old-now; without it {} after sign-new ends)", humantime::format_duration(wait)),
            "EVERY TOKEN THE OLD KEY SIGNED STOPS WORKING at drop-old: pods get 401 from the API until their kubelets renew their tokens (within the hour)",
        )
    } else {
        (
            format!("{} after sign-new ends ({why})", humantime::format_duration(wait)),
            "pods' projected tokens are re-issued by their kubelets with the new key during the wait",
        )
    };
    session.say(format!(
        "rotate service-account-key on {}: key {old} → {shown_new}: {stands}\n  stages: {}, finish\n  control planes, one at a time: {}\n  wait before the old key goes: {wait_line}\n  {}\n  {pods_line}\n",
        model.name,
        steps.join(", "),
        cps.join(", "),
        legacy_line(&legacy, &old),
    ));
    let question = || {
        format!(
            "Rotate the service-account key of cluster `{}` (every apiserver restarts three times, one at a time{})?",
            model.name,
            if options.drop_old_now { "; every token the old key signed stops working at once" } else { "" }
        )
    };
    if !super::consent_then_begin(session, &WF, options.consent, question)? {
        return Ok(Outcome::Previewed);
    }
    if !resuming {
        sa_key::record(&r.store, &rotation)?;
    }
    eprintln!(
        "[rotate] {} key {new} recorded beside {old} in {}",
        if resuming { "pending" } else { "new" },
        r.store.root().join(sa_key::ROTATION_FILE).display()
    );
    if rotation.step == SaStep::TrustBoth {
        roll_out(&r, &mut rotation, SaStep::TrustBoth).await?;
        rotation.step = SaStep::SignNew;
    }
    if rotation.step == SaStep::SignNew {
        if rotation.old_tokens_valid_until.is_none() {
            roll_out(&r, &mut rotation, SaStep::SignNew).await?;
            stamp(&r, &mut rotation, &options.clock, wait)?;
        }
        session.boundary(&WF, "wait")?;
        session.enter(&WF, "wait");
        let until = rotation.old_tokens_valid_until.expect("stamped");
        if sa_key::epoch(options.clock.now()) >= until {
            eprintln!("[rotate] wait: tokens the old key signed expired by {}", sa_key::show_time(until));
        } else if options.drop_old_now {
            eprintln!(
                "[rotate] wait: skipped (--drop-old-now): tokens the old key signed, valid until {} at most, stop working now",
                sa_key::show_time(until)
            );
        } else {
            return Ok(Outcome::Waiting { until, old, new });
        }
    }
    roll_out(&r, &mut rotation, SaStep::DropOld).await?;
    session.boundary(&WF, "finish")?;
    session.enter(&WF, "finish");
    sa_key::finish(&r.store, &rotation)?;
    let retired = sa_key::retired_path(&rotation)?;
    eprintln!("[rotate] the store's sa.key is now {new}; {old} kept in {retired}");
    Ok(Outcome::Finished { old, new, retired })
}

/// Records when the last control plane began signing with the new key and until when the old key's tokens
/// may be valid.
fn stamp(r: &Rotator<'_>, rotation: &mut SaRotation, clock: &Clock, wait: Duration) -> Result<()> {
    let t = sa_key::epoch(clock.now());
    rotation.signing_new_since = Some(t);
    rotation.old_tokens_valid_until = Some(t + wait.as_secs());
    sa_key::record(&r.store, rotation)?;
    eprintln!(
        "[rotate] sign-new: every control plane signs with the new key since {}; the old key stays trusted until {}",
        sa_key::show_time(t),
        sa_key::show_time(t + wait.as_secs())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_tokens_are_counted_by_the_key_id_in_their_header() {
        use base64::Engine;
        let h = |kid: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(format!("{{\"alg\":\"ES256\",\"kid\":\"{kid}\"}}"))
        };
        let out =
            format!("default/a {}\nkube-system/b {}\nteam/c {}\nteam/d \n\n", h("OLD"), h("NEW"), h("OLD"));
        let m = parse_legacy_tokens(&out);
        assert_eq!(m["OLD"], ["default/a", "team/c"]);
        assert_eq!(m["NEW"], ["kube-system/b"]);
        assert_eq!(m["?"], ["team/d"], "a Secret without a readable token");
        let line = legacy_line(&Ok(m.clone()), "OLD");
        assert!(line.contains("old key: 2 (default/a, team/c) STOP WORKING"), "{line}");
        assert!(legacy_line(&Ok(m), "NONE").contains("none (4 with other keys)"));
    }
}
