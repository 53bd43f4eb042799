//! `/v2/members`, `/v2/machines` and `/v2/stats/*`: etcd's v2 cluster and stats handlers,
//! over keel's replicated member table (the same MemberAdd/MemberRemove entries the v3
//! Cluster service proposes).

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use keel_engine::error::Error;
use keel_engine::membership::Member;
use keel_engine::v2::STATS_FIELDS;
use keel_proto::etcdserverpb::{MemberAddRequest, MemberRemoveRequest, MemberUpdateRequest};
use keel_proto::keelpb::V2Request;

use super::V2Http;
use crate::gateway::json::{self, go_string, Reply};

/// etcd's `httptypes.HTTPError`: `{"message":...}` with a status.
fn http_error(status: StatusCode, message: &str) -> Reply {
    let body = format!("{{\"message\":{}}}", go_string(message));
    json::json_reply(status, Bytes::from(body))
}

fn strings(list: &[String]) -> String {
    let items: Vec<String> = list.iter().map(|s| go_string(s)).collect();
    format!("[{}]", items.join(","))
}

/// A member as etcd's v2 JSON has it.
fn member_json(m: &Member) -> String {
    format!(
        "{{\"id\":\"{:x}\",\"name\":{},\"peerURLs\":{},\"clientURLs\":{}}}",
        m.id,
        go_string(&m.name),
        strings(&m.peer_urls),
        strings(&m.client_urls)
    )
}

impl V2Http {
    /// The member table, with this member's own attributes shown before it has published
    /// them (as the v3 MemberList does).
    async fn member_list(&self) -> Result<Vec<Member>, Error> {
        let mut members = self.handle.members().await?.members();
        if let Some(me) = members.iter_mut().find(|m| m.id == self.identity.member_id) {
            if me.name.is_empty() {
                me.name = self.identity.name.clone();
                me.client_urls = self.identity.client_urls.clone();
            }
        }
        Ok(members)
    }

    /// `/v2/members[/leader|/ID]`.
    pub(super) async fn members(&self, request: Request<Incoming>) -> Reply {
        let rest = request
            .uri()
            .path()
            .trim_start_matches("/v2/members")
            .trim_start_matches('/')
            .to_string();
        let mut reply = match (request.method().clone(), rest.as_str()) {
            (Method::GET, "") => match self.member_list().await {
                Ok(members) => {
                    let list: Vec<String> = members.iter().map(member_json).collect();
                    let body = format!("{{\"members\":[{}]}}\n", list.join(","));
                    json::json_reply(StatusCode::OK, Bytes::from(body))
                }
                Err(e) => http_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            },
            (Method::GET, "leader") => self.leader_member().await,
            (Method::GET, _) => http_error(StatusCode::NOT_FOUND, "Not found"),
            (Method::POST, _) => self.member_add(request).await,
            (Method::DELETE, id) => self.member_remove(id).await,
            (Method::PUT, id) => {
                let id = id.to_string();
                self.member_update(&id, request).await
            }
            _ => {
                let mut r = json::text_reply(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
                let allow = hyper::header::HeaderValue::from_static("GET,POST,DELETE,PUT");
                r.headers_mut().insert(hyper::header::ALLOW, allow);
                return r;
            }
        };
        let cluster = format!("{:x}", self.cluster_id);
        if let Ok(v) = hyper::header::HeaderValue::from_str(&cluster) {
            reply.headers_mut().insert("x-etcd-cluster-id", v);
        }
        reply
    }

    async fn leader_member(&self) -> Reply {
        let leader = self.handle.status().await.map(|s| s.leader).unwrap_or(0);
        let members = self.member_list().await.unwrap_or_default();
        match members.iter().find(|m| m.id == leader && leader != 0) {
            Some(m) => json::json_reply(StatusCode::OK, Bytes::from(member_json(m) + "\n")),
            None => http_error(StatusCode::SERVICE_UNAVAILABLE, "During election"),
        }
    }

    /// The `peerURLs` of a member create or update body, or the answer refusing it.
    async fn peer_urls(&self, request: Request<Incoming>) -> Result<Vec<String>, Reply> {
        #[derive(serde::Deserialize)]
        struct Urls {
            #[serde(rename = "peerURLs", default)]
            peer_urls: Vec<String>,
        }
        let body = json::read_body(request.into_body(), self.max_request_bytes)
            .await
            .map_err(|e| http_error(StatusCode::BAD_REQUEST, &e.to_string()))?;
        let urls: Urls = serde_json::from_slice(&body)
            .map_err(|e| http_error(StatusCode::BAD_REQUEST, &e.to_string()))?;
        Ok(urls.peer_urls)
    }

    async fn member_add(&self, request: Request<Incoming>) -> Reply {
        let peer_urls = match self.peer_urls(request).await {
            Ok(urls) => urls,
            Err(reply) => return reply,
        };
        let add = MemberAddRequest {
            peer_ur_ls: peer_urls,
            is_learner: false,
        };
        match self.handle.call(add).await {
            Ok(resp) => {
                let m = resp
                    .member
                    .map(|m| Member::from_proto(&m))
                    .unwrap_or_default();
                json::json_reply(StatusCode::CREATED, Bytes::from(member_json(&m) + "\n"))
            }
            Err(Error::MemberExist) => http_error(StatusCode::CONFLICT, "membership: ID exists"),
            Err(Error::PeerUrlExist) => {
                http_error(StatusCode::CONFLICT, "membership: peerURL exists")
            }
            Err(Error::MemberBadUrls) => http_error(StatusCode::BAD_REQUEST, "Invalid URLs"),
            Err(e) => http_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    /// `PUT /v2/members/ID` with `{"peerURLs": [...]}`: etcd 3.4's peer URL update (204).
    async fn member_update(&self, id_text: &str, request: Request<Incoming>) -> Reply {
        let Ok(id) = u64::from_str_radix(id_text, 16) else {
            return http_error(StatusCode::NOT_FOUND, &format!("No such member: {id_text}"));
        };
        let peer_urls = match self.peer_urls(request).await {
            Ok(urls) => urls,
            Err(reply) => return reply,
        };
        let update = MemberUpdateRequest {
            id,
            peer_ur_ls: peer_urls,
        };
        match self.handle.call(update).await {
            Ok(_) => json::empty_reply(StatusCode::NO_CONTENT),
            Err(Error::MemberNotFound) => {
                http_error(StatusCode::NOT_FOUND, &format!("No such member: {id:x}"))
            }
            Err(Error::PeerUrlExist) => {
                http_error(StatusCode::CONFLICT, "membership: peerURL exists")
            }
            Err(Error::MemberBadUrls) => http_error(StatusCode::BAD_REQUEST, "Invalid URLs"),
            Err(e) => http_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    async fn member_remove(&self, id_text: &str) -> Reply {
        let Ok(id) = u64::from_str_radix(id_text, 16) else {
            return http_error(StatusCode::NOT_FOUND, &format!("No such member: {id_text}"));
        };
        match self.handle.call(MemberRemoveRequest { id }).await {
            Ok(_) => json::empty_reply(StatusCode::NO_CONTENT),
            Err(Error::MemberNotFound) => {
                http_error(StatusCode::NOT_FOUND, &format!("No such member: {id:x}"))
            }
            Err(e) => http_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    /// `/v2/machines`: every member's client URLs, comma-separated.
    pub(super) async fn machines(&self) -> Reply {
        let members = self.member_list().await.unwrap_or_default();
        let urls: Vec<String> = members.into_iter().flat_map(|m| m.client_urls).collect();
        let mut reply = json::empty_reply(StatusCode::OK);
        *reply.body_mut() = json::full(Bytes::from(urls.join(", ")));
        reply
    }

    /// `/v2/stats/store|self|leader`.
    pub(super) async fn stats(&self, which: &str) -> Reply {
        match which {
            "store" => self.store_stats().await,
            "self" => self.self_stats().await,
            "leader" => self.leader_stats().await,
            _ => json::text_reply(StatusCode::NOT_FOUND, "404 page not found"),
        }
    }

    async fn store_stats(&self) -> Reply {
        let read = V2Request {
            method: "STATS".into(),
            ..V2Request::default()
        };
        let stats = self
            .handle
            .call(read)
            .await
            .map(|r| r.stats)
            .unwrap_or_default();
        let mut fields: Vec<String> = STATS_FIELDS
            .iter()
            .enumerate()
            .map(|(i, name)| format!("\"{name}\":{}", stats.get(i).copied().unwrap_or(0)))
            .collect();
        fields.push(format!("\"watchers\":{}", self.handle.v2_hub().count()));
        json::json_reply(
            StatusCode::OK,
            Bytes::from(format!("{{{}}}", fields.join(","))),
        )
    }

    async fn self_stats(&self) -> Reply {
        let status = self.handle.status().await.ok();
        let leader = status.as_ref().map_or(0, |s| s.leader);
        let state = if leader == self.identity.member_id {
            "StateLeader"
        } else {
            "StateFollower"
        };
        let now = self.now_ns();
        let since = self.peer_stats.leader_since(leader, now);
        let t = self.peer_stats.traffic();
        // etcd leaves the rates out while they are zero (`omitempty`).
        let rate = |name: &str, v: f64| {
            if v == 0.0 {
                String::new()
            } else {
                format!(",\"{name}\":{v}")
            }
        };
        let body = format!(
            "{{\"name\":{},\"id\":\"{:x}\",\"state\":\"{state}\",\"startTime\":\"{}\",\
             \"leaderInfo\":{{\"leader\":\"{leader:x}\",\"uptime\":\"{}\",\"startTime\":\"{}\"}},\
             \"recvAppendRequestCnt\":{}{}{},\"sendAppendRequestCnt\":{}{}{}}}",
            go_string(&self.identity.name),
            self.identity.member_id,
            super::render::rfc3339_nano(self.started_ns),
            go_duration(now - since),
            super::render::rfc3339_nano(since),
            t.recv_count,
            rate("recvPkgRate", t.recv_pkg_rate),
            rate("recvBandwidthRate", t.recv_bandwidth_rate),
            t.send_count,
            rate("sendPkgRate", t.send_pkg_rate),
            rate("sendBandwidthRate", t.send_bandwidth_rate),
        );
        json::json_reply(StatusCode::OK, Bytes::from(body))
    }

    async fn leader_stats(&self) -> Reply {
        let leader = self.handle.status().await.map(|s| s.leader).unwrap_or(0);
        if leader != self.identity.member_id {
            return http_error(StatusCode::FORBIDDEN, "not current leader");
        }
        let stats = self.peer_stats.followers();
        let members = self.member_list().await.unwrap_or_default();
        let followers: Vec<String> = members
            .iter()
            .filter(|m| m.id != leader)
            .map(|m| {
                let f = stats.get(&m.id).cloned().unwrap_or_default();
                format!(
                    "\"{:x}\":{{\"latency\":{{\"current\":{},\"average\":{},\
                     \"standardDeviation\":{},\"minimum\":{},\"maximum\":{}}},\
                     \"counts\":{{\"fail\":{},\"success\":{}}}}}",
                    m.id,
                    f.current,
                    f.average,
                    f.standard_deviation,
                    f.minimum,
                    f.maximum,
                    f.fail,
                    f.success
                )
            })
            .collect();
        let body = format!(
            "{{\"leader\":\"{leader:x}\",\"followers\":{{{}}}}}",
            followers.join(",")
        );
        json::json_reply(StatusCode::OK, Bytes::from(body))
    }
}

/// Go's `time.Duration.String` for a non-negative duration in nanoseconds.
fn go_duration(ns: i64) -> String {
    let ns = ns.max(0);
    if ns < 1_000_000_000 {
        return format!("{}ms", ns / 1_000_000);
    }
    let (h, rest) = (ns / 3_600_000_000_000, ns % 3_600_000_000_000);
    let (m, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let (s, frac) = (rest / 1_000_000_000, rest % 1_000_000_000);
    let mut secs = s.to_string();
    if frac != 0 {
        secs.push('.');
        secs.push_str(format!("{frac:09}").trim_end_matches('0'));
    }
    match (h, m) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}
