//! One session per command: the inventory, the model, the run options, one transport per host (each an SSH
//! connection made on first use and kept for the whole command), one async runtime and one executor
//! (`--concurrency` honoured). Built once at the command's edge and handed to its workflow, so every host
//! gets one connection per command, and tests hand in fake transports and local artifacts instead: the
//! lifecycle commands (`apply`, `join`, `reset`, `remove-node`) run against `transport::fake` exactly as
//! they run over SSH.

use crate::apply::ApplyOptions;
use crate::artifacts::{Component as Art, LocalArtifact};
use crate::exec::Executor;
use crate::identity::Verified;
use crate::inventory::Loaded;
use crate::material::Material;
use crate::model::ClusterModel;
use crate::state::ClusterState;
use crate::transport::Transport;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// The artifacts a session installs: resolved from the inventory's release source (verified, cached), or
/// given (tests).
pub type Artifacts = BTreeMap<(Art, String), LocalArtifact>;

/// Gives the artifacts of a model instead of the release source (tests: local files per version).
pub type ArtifactsFor = Arc<dyn Fn(&ClusterModel) -> Artifacts + Send + Sync>;

/// Everything one command works with.
pub struct Session {
    /// The inventory as loaded (path, text positions, the parsed document).
    pub loaded: Loaded,
    /// The run options (PKI root, cache, hosts, dry run, concurrency, ...).
    pub options: ApplyOptions,
    /// One transport per inventory host.
    pub transports: BTreeMap<String, Arc<dyn Transport>>,
    /// The executor every stage runs through.
    pub executor: Executor,
    runtime: tokio::runtime::Runtime,
    artifacts: Option<ArtifactsFor>,
    entered: std::sync::Mutex<Vec<(&'static str, &'static str)>>,
    /// `Some`: what the command says is kept here instead of printed (tests, golden outputs).
    captured: std::sync::Mutex<Option<String>>,
}

impl Session {
    /// Loads `inventory` and opens one SSH transport per host (connected on first use).
    pub fn open(inventory: &Path, options: ApplyOptions) -> Result<Self> {
        let loaded = crate::inventory::load(inventory)?;
        let transports = crate::apply::transports(&loaded, &options.connect)?;
        Self::new(loaded, transports, options, crate::report::auto(false))
    }

    /// A session on given transports, reporting to `reporter` (tests: fake transports and a recorder).
    pub fn new(
        loaded: Loaded,
        transports: BTreeMap<String, Arc<dyn Transport>>,
        options: ApplyOptions,
        reporter: Arc<dyn crate::report::Reporter>,
    ) -> Result<Self> {
        let runtime =
            tokio::runtime::Runtime::new().map_err(|e| Error::io("starting the async runtime", e))?;
        let executor = Executor::new(options.concurrency, reporter);
        Ok(Session {
            loaded,
            options,
            transports,
            executor,
            runtime,
            artifacts: None,
            entered: Default::default(),
            captured: Default::default(),
        })
    }

    /// Keeps what the command says (its standard output) for [`Session::said`] instead of printing it.
    pub fn capturing(self) -> Self {
        *self.captured.lock().expect("output lock") = Some(String::new());
        self
    }

    /// Says `text` on standard output (the command's result, not its progress), or keeps it when capturing.
    pub fn say(&self, text: impl AsRef<str>) {
        let text = text.as_ref();
        match self.captured.lock().expect("output lock").as_mut() {
            Some(buf) => buf.push_str(text),
            None => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
        }
    }

    /// What the command said, when capturing.
    pub fn said(&self) -> String {
        self.captured.lock().expect("output lock").clone().unwrap_or_default()
    }

    /// Installs the artifacts `f` gives for each model (its versions) instead of resolving the release
    /// source (tests of commands that move between versions).
    pub fn with_artifacts_from(mut self, f: ArtifactsFor) -> Self {
        self.artifacts = Some(f);
        self
    }

    /// The verified artifacts `model` installs (its versions and architectures), from the release source
    /// or the cache.
    pub async fn artifacts(
        &self,
        model: &ClusterModel,
        inventory: &crate::inventory::Inventory,
        options: &ApplyOptions,
    ) -> Result<Artifacts> {
        match &self.artifacts {
            Some(f) => Ok(f(model)),
            None => crate::apply::prepare_artifacts(model, inventory, &options.cache_dir).await,
        }
    }

    /// Enters stage `id` of `workflow`. A stage that is not in the workflow's list, or that comes before one
    /// already entered, is a bug: it panics in debug builds (every test), so the listed order is the order
    /// run.
    pub fn enter(&self, workflow: &'static crate::workflow::Workflow, id: &'static str) {
        let mut entered = self.entered.lock().expect("stages lock");
        let at = workflow.position(id);
        let last =
            entered.iter().rev().find(|(w, _)| *w == workflow.name).and_then(|(_, s)| workflow.position(s));
        debug_assert!(at.is_some(), "stage `{id}` is not in the {} workflow", workflow.name);
        // A workflow's repeated stages (`upgrade`: one round per step) start again at their first.
        let again = workflow.repeat.is_some_and(|(first, last_id)| {
            id == first
                && last.is_some_and(|l| {
                    workflow.position(first).is_some_and(|f| l >= f)
                        && workflow.position(last_id).is_some_and(|e| l <= e)
                })
        });
        debug_assert!(
            at >= last || again,
            "stage `{id}` of {} comes after `{}`",
            workflow.name,
            last.map(|l| workflow.stages[l].id).unwrap_or("")
        );
        entered.push((workflow.name, id));
    }

    /// A point where the command may stop: after an interrupt (Ctrl-C) every step before `next` has
    /// finished, and the command ends here (exit 130) instead of starting `next`.
    pub fn boundary(&self, workflow: &'static crate::workflow::Workflow, next: &'static str) -> Result<()> {
        if !self.executor.stopping() {
            return Ok(());
        }
        let done = self
            .entered
            .lock()
            .expect("stages lock")
            .iter()
            .filter(|(w, _)| *w == workflow.name)
            .map(|(_, s)| *s)
            .collect::<Vec<_>>()
            .join(", ");
        Err(Error::Interrupted {
            message: format!(
                "{}: interrupted before `{next}`; finished: {}",
                workflow.name,
                if done.is_empty() { "nothing" } else { &done }
            ),
            hint: Some(format!(
                "run the same `kubeforge {}` again: it continues from where each host stands (`kubeforge phases {}` lists the stages)",
                workflow.command, workflow.name
            )),
        })
    }

    /// Starts the command's workflow again from its first stage (a preview, then the run it asked about,
    /// in one session).
    pub fn next_pass(&self) {
        self.entered.lock().expect("stages lock").clear();
    }

    /// The stages entered so far, as `workflow/stage`.
    pub fn stages(&self) -> Vec<String> {
        self.entered.lock().expect("stages lock").iter().map(|(w, s)| format!("{w}/{s}")).collect()
    }

    /// The cluster model the inventory describes.
    pub fn model(&self) -> ClusterModel {
        ClusterModel::derive(&self.loaded)
    }

    /// Runs `f` to completion on the session's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// The transport of `host` (every inventory host has one).
    pub fn transport(&self, host: &str) -> Result<Arc<dyn Transport>> {
        self.transports.get(host).cloned().ok_or_else(|| {
            Error::msg(format!("`{host}` is not a host of {}", self.loaded.path.display()), None)
        })
    }

    /// The material of a run of `model` (PKI, artifacts, keys), in `scratch` when given; see
    /// [`crate::apply::prepare_with`].
    pub async fn prepare(
        &self,
        model: &mut ClusterModel,
        inventory: &crate::inventory::Inventory,
        options: &ApplyOptions,
        scratch: Option<&Path>,
        verified: &Verified,
    ) -> Result<(Material, ClusterState)> {
        let artifacts = self.artifacts(model, inventory, options).await?;
        crate::apply::prepare_with(model, options, scratch, artifacts, verified)
    }
}
