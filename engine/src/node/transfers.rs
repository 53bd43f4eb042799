//! Leader transfers (Maintenance.MoveLeader): the reply waits until the target leads, or
//! until the transfer's time runs out.

use keel_proto::etcdserverpb::MoveLeaderResponse;

use crate::error::Error;
use crate::request::Response;

/// MoveLeader requests waiting for their target to lead.
#[derive(Debug, Default)]
pub(super) struct Transfers {
    /// (token, target, deadline ms).
    waiting: Vec<(u64, u64, u64)>,
}

impl Transfers {
    /// Whether no transfer waits.
    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// A transfer to `target` started; its reply waits until `deadline_ms`.
    pub(super) fn wait(&mut self, token: u64, target: u64, deadline_ms: u64) {
        self.waiting.push((token, target, deadline_ms));
    }

    /// Answers the transfers whose target now leads, or whose time ran out.
    pub(super) fn check(
        &mut self,
        leader: u64,
        now_ms: u64,
    ) -> Vec<(u64, Result<Response, Error>)> {
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|&(_, target, deadline)| target == leader || now_ms >= deadline);
        self.waiting = waiting;
        done.into_iter()
            .map(|(token, target, _)| {
                let result = if target == leader {
                    Ok(Response::MoveLeader(MoveLeaderResponse::default()))
                } else {
                    Err(Error::TimeoutLeaderTransfer)
                };
                (token, result)
            })
            .collect()
    }
}
