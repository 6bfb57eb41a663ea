//! `state`: places the cluster state file on every control plane (`/var/lib/kubeforge/state.json`, 0600),
//! so another admin machine holding the PKI can take over. The content is the state the cluster will be in
//! once the run succeeds; an unchanged state is an unchanged file, so a converged run sends nothing.

use super::{Context, HostWork, Phase};
use crate::model::HostModel;
use crate::plan::{DesiredFile, HostDesired};

/// The phase id (its checkpoint is not recorded in the state it writes).
pub const ID: &str = "state";

/// Phase `state`.
pub struct RecordState;

impl Phase for RecordState {
    fn id(&self) -> &'static str {
        ID
    }
    fn title(&self) -> &'static str {
        "Record the cluster state on the control planes"
    }
    fn cluster_wide(&self) -> bool {
        true
    }
    fn work(&self, ctx: &Context<'_>, host: &HostModel) -> crate::Result<Option<HostWork>> {
        if !host.roles.control_plane {
            return Ok(None);
        }
        let file = DesiredFile::bytes(
            crate::state::REMOTE_PATH,
            0o600,
            ctx.material.state.to_json(),
            "cluster state",
        )
        .secret();
        Ok(Some(HostWork::Converge(HostDesired { files: vec![file], ..Default::default() })))
    }
}
