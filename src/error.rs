//! The top-level error type: every module's error converts into it, and `main` turns it into
//! `error:` / `caused by:` / `hint:` lines and an exit code.

use std::error::Error as StdError;

/// Result alias used by command entry points.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Exit code for invalid input (inventory, arguments): nothing touched a machine.
pub const EXIT_INVALID_INPUT: i32 = 2;
/// Exit code for a failure while running (remote command, I/O, network), or a check that found a problem.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code after an interrupt (Ctrl-C) stopped a command between steps, as shells report SIGINT.
pub const EXIT_INTERRUPTED: i32 = 130;

/// Every error a command can end with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The inventory failed to load or validate.
    #[error(transparent)]
    Inventory(#[from] crate::inventory::InventoryError),
    /// Certificate or kubeconfig handling failed.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// Connecting to or running something on a host failed.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    /// Steps failed on some hosts.
    #[error(transparent)]
    Exec(#[from] crate::exec::ExecError),
    /// Release artifacts could not be resolved, downloaded, verified or bundled.
    #[error(transparent)]
    Artifacts(#[from] crate::artifacts::ArtifactError),
    /// The cluster state file could not be read, written or used.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// A local file operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A command-line value that cannot be used (exit 2: nothing was touched).
    #[error("{message}")]
    Usage {
        /// What is wrong with which flag.
        message: String,
        /// How to fix it.
        hint: Option<String>,
    },
    /// A step of a lifecycle command failed on a host: which host, what it was doing, the cause (printed as
    /// `caused by:`) and how to go on.
    #[error("{host}: {what}")]
    OnHost {
        /// The host.
        host: String,
        /// What was being done (`restore the etcd data`).
        what: String,
        /// Why it failed.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
        /// How to go on.
        hint: Option<String>,
    },
    /// An interrupt stopped the command between two of its steps (exit 130).
    #[error("{message}")]
    Interrupted {
        /// Where it stopped.
        message: String,
        /// How to go on.
        hint: Option<String>,
    },
    /// Anything else, with a message and an optional hint.
    #[error("{message}")]
    Other {
        /// What went wrong.
        message: String,
        /// How to fix it, if known.
        hint: Option<String>,
    },
}

impl Error {
    /// Builds an [`Error::Other`] with a hint.
    pub fn msg(message: impl Into<String>, hint: Option<&str>) -> Self {
        Error::Other { message: message.into(), hint: hint.map(str::to_owned) }
    }

    /// A command-line value that cannot be used: exits 2, like every usage error.
    pub fn usage(message: impl Into<String>, hint: Option<&str>) -> Self {
        Error::Usage { message: message.into(), hint: hint.map(str::to_owned) }
    }

    /// A failure of `what` on `host`, caused by `source`, with a hint.
    pub fn on_host(
        host: impl Into<String>,
        what: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
        hint: Option<&str>,
    ) -> Self {
        Error::OnHost {
            host: host.into(),
            what: what.into(),
            source: source.into(),
            hint: hint.map(str::to_owned),
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Inventory(_) | Error::Usage { .. } => EXIT_INVALID_INPUT,
            Error::Interrupted { .. } => EXIT_INTERRUPTED,
            Error::Exec(crate::exec::ExecError::HostsFailed { interrupted: true, .. }) => EXIT_INTERRUPTED,
            _ => EXIT_FAILURE,
        }
    }

    /// A hint for the user, if the error knows how to fix itself.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Inventory(e) => e.hint(),
            Error::Pki(e) => e.hint(),
            Error::Transport(e) => e.hint(),
            Error::Exec(e) => e.hint(),
            Error::Artifacts(e) => e.hint(),
            Error::Other { hint, .. }
            | Error::Usage { hint, .. }
            | Error::Interrupted { hint, .. }
            | Error::OnHost { hint, .. } => hint.clone(),
            Error::Io { .. } | Error::State(_) => None,
        }
    }

    /// Renders the error as the lines `main` prints: `error:`, each `caused by:`, then `hint:`.
    pub fn report(&self) -> String {
        let mut out = format!("error: {self}");
        let mut cause = self.source();
        // `transparent` variants forward `source()` to the inner error's source, so no line repeats.
        while let Some(c) = cause {
            out.push_str(&format!("\n  caused by: {c}"));
            cause = c.source();
        }
        if let Some(h) = self.hint() {
            out.push_str(&format!("\n  hint: {h}"));
        }
        out
    }
}
