//! The PKI: the certificate table, issuing (the only rcgen user), the store under `pki/<cluster>/`,
//! expiry checks, kubeconfigs and the client bundle.

/// Errors from certificate and kubeconfig handling.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file in the store could not be read or written.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl PkiError {
    /// How to fix it, if known.
    pub fn hint(&self) -> Option<String> {
        None
    }
}
