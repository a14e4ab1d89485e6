//! API requests other cores answer: `GET /api/channels` (this core's
//! counts now, the other cores' through the mesh, answered when the last
//! one replies), and publish, history and presence (answered by the
//! channels' owners); and sending a response held in the scratch buffer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::slab::Phase;
use super::Shard;
use crate::app::api;
use crate::app::requests::{json_error, ApiCall};
use crate::conn::ConnKey;
use crate::http;
use crate::hub::{
    HistoryAnswer, HistoryReq, MeshMsg, Position, PresenceList, ReplyTo, Unsequenced,
};

/// API requests waiting for other cores' answers.
#[derive(Default)]
pub(super) struct Queries {
    pending: Vec<ChannelsQuery>,
    next: u32,
    /// Publish, history and presence requests, by ticket.
    calls: Vec<Call>,
}

/// An API request waiting for channel owners.
struct Call {
    ticket: u32,
    key: ConnKey,
    wait: Wait,
}

enum Wait {
    /// Each publication's place, in request order.
    Publish {
        results: Vec<(Box<str>, Option<Position>)>,
        left: usize,
    },
    History,
    Presence,
}

/// An `/api/channels` request gathering every core's counts.
struct ChannelsQuery {
    id: u32,
    key: ConnKey,
    waiting_for: usize,
    counts: BTreeMap<String, u64>,
}

impl Shard {
    /// Starts `GET /api/channels`: this core's counts now, the other
    /// cores' through the mesh; answered when the last one replies.
    pub(super) fn start_query(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.phase = Phase::Answering;
        // Bounded like a close: if an answer never comes, the connection
        // is dropped rather than held.
        self.set_deadline(key, Instant::now() + self.cfg.close_timeout);
        let mut counts = BTreeMap::new();
        for (name, n) in self.env.channels.local_counts() {
            counts.insert(name.to_string(), n as u64);
        }
        let peers = self.env.channels.peer_count();
        let id = self.queries.next;
        self.queries.next = id.wrapping_add(1);
        self.queries.pending.push(ChannelsQuery {
            id,
            key,
            waiting_for: peers,
            counts,
        });
        if let Some(m) = &mut self.mesh {
            let from = self.id as u16;
            for core in (0..peers + 1).filter(|&c| c != self.id) {
                m.send_to(core, MeshMsg::ChannelsQuery { from, query: id });
            }
        }
        self.finish_query(id);
    }

    /// Another core's counts for query `id`.
    pub(super) fn channels_reply(&mut self, id: u32, channels: &[(Arc<str>, u32)]) {
        if let Some(q) = self.queries.pending.iter_mut().find(|q| q.id == id) {
            for (name, n) in channels {
                *q.counts.entry(name.to_string()).or_insert(0) += *n as u64;
            }
            q.waiting_for = q.waiting_for.saturating_sub(1);
        }
        self.finish_query(id);
    }

    fn finish_query(&mut self, id: u32) {
        let Some(pos) = self
            .queries
            .pending
            .iter()
            .position(|q| q.id == id && q.waiting_for == 0)
        else {
            return;
        };
        let q = self.queries.pending.swap_remove(pos);
        let list: Vec<(String, u64)> = q.counts.into_iter().collect();
        let mut body = Vec::new();
        api::write_channels_body(&list, &mut body);
        self.env.scratch.clear();
        http::write_response(200, "application/json", "", &body, &mut self.env.scratch);
        self.respond(q.key);
    }

    /// Starts an API request channel owners answer: the connection waits
    /// (bounded like a close) while each owner is asked.
    pub(super) fn start_api(&mut self, key: ConnKey, call: ApiCall) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.phase = Phase::Answering;
        self.set_deadline(key, Instant::now() + self.cfg.close_timeout);
        let ticket = self.queries.next;
        self.queries.next = ticket.wrapping_add(1);
        let from = self.id as u16;
        let channels = &mut self.env.channels;
        let wait = match call {
            ApiCall::Publish(batch) => {
                let mut results = Vec::with_capacity(batch.len());
                for (index, (channel, payload)) in batch.into_iter().enumerate() {
                    let owner = channels.owner_of(&channel);
                    let reply = ReplyTo::Api {
                        ticket,
                        index: index as u32,
                    };
                    let u = Unsequenced {
                        from,
                        reply,
                        channel: channel.clone(),
                        payload,
                    };
                    channels.send(owner, MeshMsg::Sequence(Box::new(u)));
                    results.push((channel, None));
                }
                let left = results.len();
                Wait::Publish { results, left }
            }
            ApiCall::History(req) => {
                let owner = channels.owner_of(&req.channel);
                let req = HistoryReq {
                    from,
                    reply: ReplyTo::Api { ticket, index: 0 },
                    ..req
                };
                channels.send(owner, MeshMsg::History(Box::new(req)));
                Wait::History
            }
            ApiCall::Presence(channel) => {
                let owner = channels.owner_of(&channel);
                let msg = MeshMsg::Presence {
                    from,
                    reply: ReplyTo::Api { ticket, index: 0 },
                    channel,
                };
                channels.send(owner, msg);
                Wait::Presence
            }
        };
        self.queries.calls.push(Call { ticket, key, wait });
    }

    fn take_call(&mut self, ticket: u32) -> Option<Call> {
        let at = self.queries.calls.iter().position(|c| c.ticket == ticket)?;
        Some(self.queries.calls.swap_remove(at))
    }

    /// A publication of API request `ticket` was numbered.
    pub(super) fn api_sequenced(&mut self, ticket: u32, index: u32, position: Position) {
        let Some(call) = self.queries.calls.iter_mut().find(|c| c.ticket == ticket) else {
            return;
        };
        let Wait::Publish { results, left } = &mut call.wait else {
            return;
        };
        if let Some(slot) = results.get_mut(index as usize) {
            if slot.1.replace(position).is_none() {
                *left -= 1;
            }
        }
        if *left > 0 {
            return;
        }
        let Some(Call {
            key,
            wait: Wait::Publish { results, .. },
            ..
        }) = self.take_call(ticket)
        else {
            return;
        };
        let results: Vec<(Box<str>, Position)> = results
            .into_iter()
            .map(|(c, p)| (c, p.unwrap_or_default()))
            .collect();
        let mut body = Vec::new();
        api::write_published_results(&results, &mut body);
        self.env.scratch.clear();
        http::write_response(200, "application/json", "", &body, &mut self.env.scratch);
        self.respond(key);
    }

    /// The broker refused a request of API request `ticket`: 503, and
    /// the whole request fails (a batch's other publications may have
    /// been stored; none of this one was acked).
    pub(super) fn api_refused(&mut self, ticket: u32, reason: &str) {
        let Some(call) = self.take_call(ticket) else {
            return;
        };
        self.env.scratch.clear();
        json_error(
            503,
            "Retry-After: 1\r\n",
            "unavailable",
            reason,
            &mut self.env.scratch,
        );
        self.respond(call.key);
    }

    /// The history read of API request `ticket`.
    pub(super) fn api_history(&mut self, ticket: u32, answer: HistoryAnswer) {
        let Some(call) = self.take_call(ticket) else {
            return;
        };
        self.env.scratch.clear();
        match answer {
            HistoryAnswer::Found {
                position,
                publications,
            } => {
                let mut body = Vec::new();
                api::write_history_body(position, &publications, &mut body);
                http::write_response(200, "application/json", "", &body, &mut self.env.scratch);
            }
            HistoryAnswer::EpochMismatch { current } => {
                let msg = super::fanout::epoch_mismatch(current);
                json_error(400, "", "epoch_mismatch", &msg, &mut self.env.scratch);
            }
        }
        self.respond(call.key);
    }

    /// The presence list of API request `ticket`.
    pub(super) fn api_presence(&mut self, ticket: u32, list: &PresenceList) {
        let Some(call) = self.take_call(ticket) else {
            return;
        };
        let mut body = Vec::new();
        crate::app::protocol::write_presence_body(list, &mut body);
        self.env.scratch.clear();
        http::write_response(200, "application/json", "", &body, &mut self.env.scratch);
        self.respond(call.key);
    }

    /// Sends the response in the scratch buffer and closes after it.
    pub(super) fn respond(&mut self, key: ConnKey) {
        self.stats.http_requests += 1;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let env = &mut self.env;
        let scratch = &env.scratch;
        conn.out
            .write_with(&mut env.pool, |v| v.extend_from_slice(scratch));
        self.linger(key);
    }
}
