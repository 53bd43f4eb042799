//! Requests into the node: routing a request to the part that serves it, proposing writes,
//! batching linearizable reads, MoveLeader, and the leader's lease work.

use keel_proto::etcdserverpb::{AlarmType, LeaseRevokeRequest, WatchCreateRequest};
use keel_proto::keelpb::{raft_request, AuthHeader, RaftRequest};
use prost::Message as _;

use super::{Input, Node};
use crate::alarm;
use crate::auth::{Credential, Perm};
use crate::bugs::Bug;
use crate::error::Error;
use crate::request::{Admin, Read, Request, Route};
use crate::watch::WatchInput;

impl Node {
    /// Feeds client requests that arrived together (the driver's commands of one turn): as
    /// stepping each in turn, except that raft's Ready is handled once, after all of them, so
    /// their linearizable reads share one ReadIndex round and their writes one persist batch.
    /// Any other input among them is stepped on its own, after the requests before it.
    pub fn step_requests(&mut self, inputs: Vec<Input>) {
        let mut fed = false;
        for input in inputs {
            if matches!(input, Input::Request { .. } | Input::AuthRequest { .. }) {
                self.feed(input);
                fed = true;
            } else {
                if std::mem::take(&mut fed) {
                    self.settle();
                }
                self.step(input);
            }
        }
        if fed {
            self.settle();
        }
    }

    /// A client request with its caller: resolves the token (etcd's `AuthInfoFromCtx`),
    /// remembers the caller for the checks, and routes the request.
    pub(super) fn on_auth_request(
        &mut self,
        token: u64,
        request: Request,
        auth_token: Option<crate::auth::Credential>,
    ) {
        match self
            .sm
            .resolve_caller(auth_token.as_ref(), self.clock.now_ms)
        {
            Ok(caller) => {
                self.callers.insert(token, caller);
                self.on_route(token, request.route());
            }
            Err(e) => self.reply(token, Err(e)),
        }
    }

    /// etcd's `IsAdminPermitted` for a client's credential against the applied auth store,
    /// with no log entry: Maintenance.Defragment and Snapshot check it when they arrive, as
    /// etcd's `authMaintenanceServer` does.
    pub fn check_admin(&mut self, credential: Option<&Credential>) -> Result<(), Error> {
        let caller = self.sm.resolve_caller(credential, self.clock.now_ms)?;
        self.sm.auth().check_admin(Some(&caller))
    }

    /// A Watch create with its caller: created if the caller may read the range, else
    /// refused with etcd's cancel reason (the gRPC status text of the error).
    pub(super) fn on_watch_create(
        &mut self,
        stream: crate::watch::StreamId,
        request: WatchCreateRequest,
        auth_token: Option<crate::auth::Credential>,
    ) {
        let now_ms = self.clock.now_ms;
        let checked = self
            .sm
            .resolve_caller(auth_token.as_ref(), now_ms)
            .and_then(|caller| {
                let (key, end) = (&request.key, &request.range_end);
                if self.bugs.has(Bug::WatchCreateSkipAuth) {
                    return Ok(()); // the simulator's `watch-create-skip-auth` bug
                }
                self.sm.auth().check(Some(&caller), key, end, Perm::Read)
            });
        let header = self.header_info();
        match checked {
            Ok(()) => {
                let input = WatchInput::Create { stream, request };
                self.watches.input(input, self.sm.store(), header);
            }
            Err(e) => {
                let reason = format!("rpc error: code = {} desc = {e}", e.code().name());
                self.watches
                    .refuse_create(stream, reason, self.sm.store(), header);
            }
        }
    }

    /// The check when a request arrives (etcd's API-layer checks): admin requests and the
    /// other non-KV writes against the applied auth store. Reads are checked when served;
    /// puts, deletes, txns and lease revokes only at apply, against the auth store of their index, as etcd
    /// 3.4 checks them (its authApplierV3): this member's applied auth store may lag a change
    /// another member has already acknowledged, and a write refused here on that stale state
    /// would be refused with a permission its user had (the simulator's auth check found one
    /// on a member restarting behind the others).
    fn check_arrival(&self, token: u64, route: &Route) -> Result<(), Error> {
        let Some(caller) = self.callers.get(&token) else {
            return Ok(()); // the cluster's own request
        };
        match route {
            // The simulator's `skip-apply-auth-check` bug moves the check here.
            Route::Write(body) if self.bugs.has(Bug::SkipApplyAuthCheck) => {
                self.sm.check_write(Some(caller), body)
            }
            Route::Write(body) if is_data_write(body) => Ok(()),
            Route::Write(body) => self.sm.check_write(Some(caller), body),
            // etcd 3.4 checks MoveLeader for no one.
            Route::Admin(Admin::MoveLeader(_)) => Ok(()),
            Route::Admin(_) => self.sm.auth().check_admin(Some(caller)),
            Route::Read { .. } => Ok(()),
        }
    }

    /// The check when a read is served, against the auth store it is served from.
    fn check_served(&mut self, token: u64, read: &Read) -> Result<(), Error> {
        match self.callers.remove(&token) {
            Some(caller) => self.sm.check_read(&caller, read),
            None => Ok(()),
        }
    }

    /// Sends a routed request to the part that serves it.
    pub(super) fn on_route(&mut self, token: u64, route: Route) {
        let on_learner_ok = matches!(&route, Route::Read { read, linearizable } if read.serves_on_learner(*linearizable));
        if self.sm.is_learner() && !on_learner_ok {
            self.reply(token, Err(Error::NotSupportedForLearner));
            return;
        }
        let writes = matches!(&route, Route::Write(_))
            || matches!(&route, Route::Admin(a) if !matches!(a, Admin::MoveLeader(_)));
        if let Err(e) = self.check_arrival(token, &route) {
            self.reply(token, Err(e));
            return;
        }
        if writes && self.no_space.is_some() {
            // This member's disk is full: nothing it proposes could be made durable here, so
            // nothing it proposes would be answered. Reads and watches go on.
            self.reply(token, Err(Error::NoSpace));
            return;
        }
        match route {
            Route::Admin(Admin::MoveLeader(m)) => self.move_leader(token, m.target_id),
            Route::Read {
                read,
                linearizable: false,
            } => self.serve_read(token, read),
            Route::Read { read, .. }
                if self.bugs.has(Bug::ReadIndexSkipHeartbeat)
                    && self.core.is_leader()
                    && !matches!(read, Read::LeaseKeepAlive(_)) =>
            {
                // The `read-index-skip-heartbeat` bug: a leader answers linearizable reads
                // from its own state without confirming it still leads.
                self.serve_read(token, read)
            }
            Route::Read { read, .. }
                if self.bugs.has(Bug::V2QuorumReadLocal) && matches!(read, Read::V2(_)) =>
            {
                // The `v2-quorum-read-local` bug: a v2 quorum read skips the ReadIndex round.
                self.serve_read(token, read)
            }
            route if !self.core.has_leader() => {
                if let Err(token) = self.leader_wait.wait(self.clock.now_ms, token, route) {
                    self.reply(token, Err(Error::NoLeader));
                }
            }
            // The round starts once the inputs that arrived with this one are in (`settle`).
            Route::Read { read, .. } => self.reads.push(token, read),
            Route::Write(body) => self.propose(token, body),
            Route::Admin(Admin::MemberAdd(r)) => self.member_add(token, r),
            Route::Admin(Admin::MemberRemove(r)) => self.member_remove(token, r.id),
            Route::Admin(Admin::MemberPromote(r)) => self.member_promote(token, r.id),
        }
    }

    fn serve_read(&mut self, token: u64, read: Read) {
        if let Err(e) = self.check_served(token, &read) {
            return self.reply(token, Err(e));
        }
        let leading = self.core.is_leader();
        let result = self.sm.serve_read(self.clock, leading, read);
        self.reply(token, result);
    }

    fn propose(&mut self, token: u64, mut body: raft_request::Request) {
        if let Some(oldest) = self.sm.make_room_for_proposal() {
            self.reply(oldest, Err(Error::Timeout));
        }
        if self.sm.alarms().is_active(AlarmType::Corrupt) && alarm::refuses_when_corrupt(&body) {
            return self.reply(token, Err(Error::Corrupt));
        }
        if self.sm.alarms().is_active(AlarmType::Nospace) && alarm::refuses_when_capped(&body) {
            // Refused before the log, as etcd's quota check does, so a full member is not
            // sent more to write; the apply refuses what was proposed before the alarm.
            return self.reply(token, Err(Error::NoSpace));
        }
        if self.refused_by_quota(token, &body) {
            return; // answered once this member's alarm is applied
        }
        match &mut body {
            raft_request::Request::MemberUpdate(r) => {
                if let Err(e) = self.sm.membership().check_update(r.id, &r.peer_ur_ls) {
                    return self.reply(token, Err(e));
                }
            }
            // The proposer picks the id, so every member applies the same grant.
            raft_request::Request::LeaseGrant(grant) if grant.id == 0 => {
                grant.id = self.sm.leases_mut().choose_id();
            }
            _ => {}
        }
        let caller = self.callers.remove(&token).map(|c| c.header());
        match self.propose_entry_as(body, caller) {
            Some(id) => self.sm.track_proposal(id, token),
            None => self.reply(token, Err(Error::NoLeader)),
        }
    }

    /// Proposes one log entry; returns its proposal id, or `None` if raft dropped it.
    pub(super) fn propose_entry(&mut self, body: raft_request::Request) -> Option<u64> {
        self.propose_entry_as(body, None)
    }

    /// Proposes one log entry for a client (`auth`: its caller, checked again at apply).
    fn propose_entry_as(
        &mut self,
        body: raft_request::Request,
        auth: Option<AuthHeader>,
    ) -> Option<u64> {
        let id = self.sm.next_proposal_id();
        let entry = RaftRequest {
            member_id: self.cfg.member_id,
            id,
            auth,
            request: Some(body),
        };
        match self.core.propose(entry.encode_to_vec()) {
            Ok(()) => Some(id),
            Err(e) => {
                tracing::debug!(error = %e, "proposal dropped");
                None
            }
        }
    }

    /// Starts a leader transfer to `target`; the reply waits until `target` leads.
    fn move_leader(&mut self, token: u64, target: u64) {
        if !self.core.is_leader() {
            self.reply(token, Err(Error::NotLeader));
            return;
        }
        if !self.core.is_voter(target) {
            self.reply(token, Err(Error::BadLeaderTransferee));
            return;
        }
        if target != self.cfg.member_id {
            self.core.transfer_leader(target);
        }
        // etcd waits for the transfer up to its request timeout; three election timeouts is
        // ample for raft's own transfer timeout (one election timeout) to run out first.
        let deadline = self.clock.now_ms + 3 * self.clock.election_timeout_ms();
        self.transfers.wait(token, target, deadline);
    }

    /// Leader: proposes revokes of expired leases and remaining-TTL checkpoints. Expiry is
    /// decided here, from the leader's clock only, and carried out through the log.
    pub(super) fn propose_lease_work(&mut self) {
        if !self.leads_leases() {
            return;
        }
        let work = self.sm.leases_mut().leader_work(self.clock.now_ms);
        for id in work.revoke {
            let body = raft_request::Request::LeaseRevoke(LeaseRevokeRequest { id });
            if self.propose_entry(body).is_none() {
                self.sm.leases_mut().revoke_not_proposed(id);
            }
        }
        if let Some(checkpoints) = work.checkpoint {
            // A lost checkpoint is harmless: the next one comes an interval later.
            let _ = self.propose_entry(raft_request::Request::LeaseCheckpoint(checkpoints));
        }
    }

    /// While this member's disk is full: proposes its `NOSPACE` alarm until the applied table
    /// shows it. A leader proposes once per term (the entry is in its own log); a follower's
    /// forwarded proposal can be lost, so it tries again every two election timeouts.
    pub(super) fn raise_no_space_alarm(&mut self) {
        let Some(no_space) = self.no_space else {
            return;
        };
        if self.sm.alarms().has(self.cfg.member_id, AlarmType::Nospace) {
            return;
        }
        if let Some(proposed) = self.propose_own_nospace(no_space) {
            tracing::warn!("disk full: raising the NOSPACE alarm");
            self.no_space = Some(proposed);
        }
    }

    /// Starts a ReadIndex round for the waiting reads, unless one is in flight.
    pub(super) fn start_read_round(&mut self) {
        if let Some(ctx) = self.reads.start_round(self.clock.now_ms) {
            self.core.read_index(ctx);
        }
    }

    /// A ReadIndex round can be lost (a follower forwards it to a leader that a partition or a
    /// crash then hides); after an election timeout its reads go into a fresh round, so one
    /// lost message never stalls every later linearizable read.
    pub(super) fn retry_stuck_read_round(&mut self) {
        if !self
            .reads
            .round_stuck(self.clock.now_ms, self.clock.election_timeout_ms())
        {
            return;
        }
        self.reads.requeue_in_flight();
        if self.core.has_leader() {
            self.start_read_round();
        }
    }

    /// Serves the confirmed reads the applied index has reached.
    pub(super) fn serve_confirmed_reads(&mut self) {
        let reads = self.reads.take_servable(self.sm.applied_index());
        let leading = self.core.is_leader();
        let stale_before = self
            .clock
            .now_ms
            .saturating_sub(self.clock.election_timeout_ms());
        for (token, read, started_ms) in reads {
            if let Err(e) = self.check_served(token, &read) {
                self.reply(token, Err(e));
                continue;
            }
            if matches!(read, Read::LeaseKeepAlive(_)) && started_ms < stale_before {
                // The round proves this member led when it started, an election timeout or
                // more ago (it was paused, or its acks were held up): another member may have
                // been elected since and expired the lease. A renewal now could outlive the
                // lease there, so the client is sent to find the current leader instead.
                self.reply(token, Err(Error::NotLeader));
                continue;
            }
            let result = self.sm.serve_confirmed_read(self.clock, leading, read);
            self.reply(token, result);
        }
    }
}

/// Puts, deletes, txns and lease revokes: checked for permission only at apply (see
/// `check_arrival`), as etcd 3.4 checks them (a revoke needs write permission on the lease's
/// keys at its index, etcd's `checkLeasePuts`; its API layer checks nothing first).
fn is_data_write(body: &raft_request::Request) -> bool {
    use raft_request::Request as R;
    matches!(
        body,
        R::Put(_) | R::DeleteRange(_) | R::Txn(_) | R::LeaseRevoke(_)
    )
}
