//! The read-index queue: linearizable reads batched into ReadIndex rounds, and requests
//! waiting for a leader.
//!
//! ```text
//! push(read)           → next batch; a round starts unless one is in flight
//! start_round(now)     → next batch in flight under a fresh context → raft.read_index(ctx)
//! on_read_state(i, ctx)→ the batch in flight is confirmed at index i; the next round starts
//! take_servable(applied)→ the confirmed batches whose index the applied index reached
//! ```
//! Reads that arrive while a round is in flight wait for the next one, so many reads share a
//! round. A round that is lost (its leader vanished) is retried after an election timeout.

use std::collections::VecDeque;

use crate::request::{Read, Route};

/// Requests waiting for a leader, at most.
pub const WAITING_FOR_LEADER_MAX: usize = 10_000;

/// A confirmed round: its read index, when it started (node clock, ms), its reads.
type Confirmed = (u64, u64, Vec<(u64, Read)>);

/// Linearizable reads waiting for, in, or confirmed by a ReadIndex round.
#[derive(Debug)]
pub(super) struct ReadQueue {
    member_id: u64,
    incarnation: u64,
    /// Reads waiting for the next round.
    next: Vec<(u64, Read)>,
    /// The round in flight: its context id and reads.
    in_flight: Option<(u64, Vec<(u64, Read)>)>,
    /// The context id of the next round.
    next_ctx: u64,
    /// When the round in flight started (node clock, ms).
    round_started_ms: u64,
    /// Confirmed read index, when its round started → reads to serve once applied reaches it.
    confirmed: VecDeque<Confirmed>,
    /// Reads queued for a round since the node started (for the metrics).
    reads_total: u64,
    /// Rounds started since the node started, retries included (for the metrics).
    rounds_total: u64,
    /// Whether reads were pushed since [`ReadQueue::take_pushed`] last looked.
    pushed: bool,
}

impl ReadQueue {
    /// An empty queue; `member_id` and `incarnation` make this member's contexts unique.
    pub(super) fn new(member_id: u64, incarnation: u64) -> ReadQueue {
        ReadQueue {
            member_id,
            incarnation,
            next: Vec::new(),
            in_flight: None,
            next_ctx: 1,
            round_started_ms: 0,
            confirmed: VecDeque::new(),
            reads_total: 0,
            rounds_total: 0,
            pushed: false,
        }
    }

    /// A read for the next round.
    pub(super) fn push(&mut self, token: u64, read: Read) {
        self.next.push((token, read));
        self.reads_total += 1;
        self.pushed = true;
    }

    /// Whether reads were pushed since the last call: the node then starts a round for them
    /// once the inputs that arrived together are all in (see `Node::step_requests`).
    pub(super) fn take_pushed(&mut self) -> bool {
        std::mem::take(&mut self.pushed)
    }

    /// Reads queued and rounds started since the node started: their ratio is how many reads
    /// share a round.
    pub(super) fn totals(&self) -> (u64, u64) {
        (self.reads_total, self.rounds_total)
    }

    /// Starts a round for the waiting reads, unless one is in flight or none wait: returns
    /// the context to hand to raft's `read_index`.
    pub(super) fn start_round(&mut self, now_ms: u64) -> Option<Vec<u8>> {
        if self.in_flight.is_some() || self.next.is_empty() {
            return None;
        }
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        self.in_flight = Some((ctx, std::mem::take(&mut self.next)));
        self.round_started_ms = now_ms;
        self.rounds_total += 1;
        Some(self.context(ctx))
    }

    /// raft's context for round `round`: this member's id, its incarnation and the round,
    /// so no two members' (or two runs') rounds share a context. The leader ignores a ReadIndex
    /// whose context is already pending, so a shared one would stall a round until its retry.
    fn context(&self, round: u64) -> Vec<u8> {
        let mut ctx = Vec::with_capacity(24);
        ctx.extend_from_slice(&self.member_id.to_be_bytes());
        ctx.extend_from_slice(&self.incarnation.to_be_bytes());
        ctx.extend_from_slice(&round.to_be_bytes());
        ctx
    }

    /// raft confirmed the round with context `ctx` at `index`. Returns whether it was the
    /// round in flight (the caller then starts the next one).
    pub(super) fn on_read_state(&mut self, index: u64, ctx: &[u8]) -> bool {
        let Some((in_flight, _)) = &self.in_flight else {
            return false;
        };
        if ctx != self.context(*in_flight) {
            return false;
        }
        if let Some((_, batch)) = self.in_flight.take() {
            self.confirmed
                .push_back((index, self.round_started_ms, batch));
        }
        true
    }

    /// The confirmed reads the applied index has reached, in order, each with the time its
    /// round started (the confirmation says this member led then, not now).
    pub(super) fn take_servable(&mut self, applied: u64) -> Vec<(u64, Read, u64)> {
        let mut reads = Vec::new();
        while let Some((index, _, _)) = self.confirmed.front() {
            if *index > applied {
                break;
            }
            if let Some((_, started_ms, batch)) = self.confirmed.pop_front() {
                reads.extend(batch.into_iter().map(|(t, r)| (t, r, started_ms)));
            }
        }
        reads
    }

    /// Puts the round in flight back in front of the waiting reads (it may never be
    /// answered). Returns whether there was one.
    pub(super) fn requeue_in_flight(&mut self) -> bool {
        let Some((ctx, mut reads)) = self.in_flight.take() else {
            return false;
        };
        tracing::debug!(ctx, reads = reads.len(), "read index round requeued");
        reads.append(&mut self.next);
        self.next = reads;
        true
    }

    /// Whether the round in flight started at least `timeout_ms` ago.
    pub(super) fn round_stuck(&self, now_ms: u64, timeout_ms: u64) -> bool {
        self.in_flight.is_some() && now_ms >= self.round_started_ms + timeout_ms
    }

    /// What must always hold.
    pub(super) fn check(&self) {
        if let Some((ctx, reads)) = &self.in_flight {
            assert!(
                *ctx < self.next_ctx,
                "round {ctx} in flight was never started"
            );
            assert!(!reads.is_empty(), "an empty read round {ctx} is in flight");
        }
    }
}

/// Requests that arrived while no leader was known, oldest first.
#[derive(Debug, Default)]
pub(super) struct LeaderWait {
    /// (since when, token, request).
    waiting: VecDeque<(u64, u64, Route)>,
}

impl LeaderWait {
    /// Parks a request until a leader is known; gives it back if the queue is full.
    pub(super) fn wait(&mut self, now_ms: u64, token: u64, route: Route) -> Result<(), u64> {
        if self.waiting.len() >= WAITING_FOR_LEADER_MAX {
            return Err(token);
        }
        if let Some((since, _, _)) = self.waiting.back() {
            assert!(*since <= now_ms, "the node clock went back");
        }
        self.waiting.push_back((now_ms, token, route));
        Ok(())
    }

    /// Every waiting request, oldest first.
    pub(super) fn take_all(&mut self) -> Vec<(u64, Route)> {
        let waiting = std::mem::take(&mut self.waiting);
        waiting.into_iter().map(|(_, t, r)| (t, r)).collect()
    }

    /// The tokens of requests that waited `wait_max_ms` or longer; they leave the queue.
    pub(super) fn expire(&mut self, now_ms: u64, wait_max_ms: u64) -> Vec<u64> {
        let mut expired = Vec::new();
        while let Some((since, _, _)) = self.waiting.front() {
            if now_ms < since + wait_max_ms {
                break;
            }
            if let Some((_, token, _)) = self.waiting.pop_front() {
                expired.push(token);
            }
        }
        expired
    }
}
