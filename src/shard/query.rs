//! `GET /api/channels`: this core's counts now, the other cores' through
//! the mesh, answered when the last one replies; and sending a response
//! held in the scratch buffer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::slab::Phase;
use super::Shard;
use crate::app::api;
use crate::conn::ConnKey;
use crate::http;
use crate::hub::MeshMsg;

/// `/api/channels` requests waiting for other cores' answers.
#[derive(Default)]
pub(super) struct Queries {
    pending: Vec<ChannelsQuery>,
    next: u32,
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
