//! Argument types every command shares (the cluster settings, counts, preflight check names) and the
//! conversion to run options: below both `cli` and the command modules, so neither imports the other.

use crate::Result;
use std::path::PathBuf;

/// Settings every command that works on a cluster shares.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// Hosts worked on at once.
    #[arg(long, default_value_t = 10, value_parser = at_least_one)]
    pub concurrency: usize,
    /// Record host keys that are not yet in known_hosts (changed keys are always refused).
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// Directory holding `<cluster>/` PKI directories (default: `pki/` beside the inventory file).
    #[arg(long)]
    pub pki_dir: Option<PathBuf>,
    /// Artifact cache directory (default: the user cache dir, or $KUBEFORGE_CACHE_DIR).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

impl ClusterArgs {
    /// The run options these settings give for `inventory` (everything else at its default).
    pub fn options(self, inventory: &std::path::Path) -> Result<crate::apply::ApplyOptions> {
        let mut o = crate::apply::ApplyOptions::new(
            crate::pki::resolve_root(inventory, self.pki_dir.as_deref())?,
            self.cache_dir.unwrap_or_else(crate::artifacts::default_cache_dir),
        );
        o.concurrency = self.concurrency;
        o.connect = connect_options(self.accept_new_host_keys);
        Ok(o)
    }
}

/// `--concurrency`, `--batch`: a count of at least 1 (0 would do nothing, forever).
pub fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a count")),
    }
}

/// `--ignore-preflight-errors`: the name of a preflight check, or `all`.
pub fn preflight_check(s: &str) -> std::result::Result<String, String> {
    let known = crate::phase::preflight::CHECKS;
    if s == "all" || known.contains(&s) {
        return Ok(s.to_string());
    }
    let near = known
        .iter()
        .copied()
        .max_by(|a, b| strsim::jaro_winkler(a, s).total_cmp(&strsim::jaro_winkler(b, s)));
    Err(format!(
        "no preflight check is named `{s}`{}; the checks are {}, or `all`",
        near.filter(|n| strsim::jaro_winkler(n, s) > 0.8)
            .map(|n| format!(" (did you mean `{n}`?)"))
            .unwrap_or_default(),
        known.join(", ")
    ))
}

/// The SSH options of the command line.
pub fn connect_options(accept_new_host_keys: bool) -> crate::transport::ssh::ConnectOptions {
    crate::transport::ssh::ConnectOptions { accept_new_host_keys, ..Default::default() }
}
