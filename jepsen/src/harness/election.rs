//! The `election` workload: each client campaigns for `jelect` through the Election service
//! with a lease of 2 s kept alive, holds the leadership a moment, resigns and revokes; between
//! campaigns it asks the member who leads. Every win and every observation goes to
//! `elections.jsonl` ([`ElectionRecord`]) with its term, the create revision of the leader's
//! key. [`check_elections`]: no two clients are leaders, won or observed, in the same term.
//! As with the lock workload, the service's writes make revisions no client reports, so the
//! history stays empty.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_proto::v3electionpb::election_client::ElectionClient;
use keel_proto::v3electionpb::{CampaignRequest, LeaderRequest, ResignRequest};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use super::lock::{kept_lease, revoke};
use super::member::channel;
use super::recorder::Recorder;

const CALL: Duration = Duration::from_millis(1500);
const CAMPAIGN_WAIT: Duration = Duration::from_secs(5);
const NAME: &[u8] = b"jelect";

/// A win or an observation of a leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionRecord {
    /// The client that recorded it.
    pub client: u64,
    /// `won` (its campaign returned) or `observed` (Leader answered).
    pub op: String,
    /// The leader: the winning client, or the value an observation showed.
    pub leader: String,
    /// The term: the create revision of the leader's key.
    pub term: i64,
    /// Completion, on the history's clock.
    pub time_ns: u64,
}

/// The run's election records.
#[derive(Clone, Default)]
pub struct ElectionLog(Arc<Mutex<Vec<ElectionRecord>>>);

impl ElectionLog {
    fn push(&self, r: ElectionRecord) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    }
    /// The records so far.
    pub fn records(&self) -> Vec<ElectionRecord> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

struct Candidate {
    rec: Recorder,
    log: ElectionLog,
    client: u64,
    ch: Channel,
}

impl Candidate {
    fn record(&self, op: &str, leader: String, term: i64) {
        self.log.push(ElectionRecord {
            client: self.client,
            op: op.to_string(),
            leader,
            term,
            time_ns: self.rec.now_ns(),
        });
    }

    async fn observe(&self) {
        let mut e = ElectionClient::new(self.ch.clone());
        let call = e.leader(LeaderRequest { name: NAME.into() });
        if let Ok(Ok(r)) = tokio::time::timeout(CALL, call).await {
            if let Some(kv) = r.into_inner().kv {
                let leader = String::from_utf8_lossy(&kv.value).into_owned();
                self.record("observed", leader, kv.create_revision);
            }
        }
    }

    /// One campaign: lease, campaign, hold, resign, revoke.
    async fn campaign(&self, hold: Duration) {
        let Some((lease, keeper)) = kept_lease(&self.ch).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        };
        let mut e = ElectionClient::new(self.ch.clone());
        let call = e.campaign(CampaignRequest {
            name: NAME.into(),
            lease,
            value: self.client.to_string().into_bytes().into(),
        });
        if let Ok(Ok(r)) = tokio::time::timeout(CAMPAIGN_WAIT, call).await {
            if let Some(leader) = r.into_inner().leader {
                self.record("won", self.client.to_string(), leader.rev);
                tokio::time::sleep(hold).await;
                let resign = e.resign(ResignRequest {
                    leader: Some(leader),
                });
                let _ = tokio::time::timeout(CALL, resign).await;
            }
        }
        keeper.abort();
        revoke(&self.ch, lease).await;
    }
}

/// Runs election client `client` (on member `client % n`) until `until`.
pub async fn client(rec: Recorder, log: ElectionLog, client: u64, n: usize, until: Instant) {
    let Ok(ch) = channel(client as usize % n, CALL) else {
        return;
    };
    let c = Candidate {
        rec,
        log,
        client,
        ch,
    };
    let mut rounds = 0u64;
    while Instant::now() < until {
        rounds += 1;
        c.observe().await;
        let hold = Duration::from_millis(200 + (client * 131 + rounds * 97) % 600);
        c.campaign(hold).await;
    }
}

/// The first term with two leaders, as a sentence with the records that show it.
pub fn check_elections(records: &[ElectionRecord]) -> Option<String> {
    let mut terms: BTreeMap<i64, &ElectionRecord> = BTreeMap::new();
    for r in records.iter().filter(|r| r.term > 0) {
        match terms.get(&r.term) {
            Some(first) if first.leader != r.leader => {
                return Some(format!(
                    "two leaders in term {}: {} ({} by client {} at t {}) and {} ({} by client {} at t {})",
                    r.term,
                    first.leader,
                    first.op,
                    first.client,
                    first.time_ns,
                    r.leader,
                    r.op,
                    r.client,
                    r.time_ns
                ));
            }
            Some(_) => {}
            None => {
                terms.insert(r.term, r);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(client: u64, op: &str, leader: &str, term: i64) -> ElectionRecord {
        ElectionRecord {
            client,
            op: op.to_string(),
            leader: leader.to_string(),
            term,
            time_ns: 0,
        }
    }

    #[test]
    fn two_leaders_in_one_term_are_named() {
        let ok = vec![
            r(1, "won", "1", 5),
            r(2, "observed", "1", 5),
            r(2, "won", "2", 9),
        ];
        assert_eq!(check_elections(&ok), None, "one leader per term");
        let bad = vec![r(1, "won", "1", 5), r(3, "observed", "2", 5)];
        let v = check_elections(&bad).expect("two leaders in term 5");
        assert!(v.contains("two leaders in term 5"), "{v}");
    }
}
