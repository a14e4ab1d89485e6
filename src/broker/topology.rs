//! Which Redis node holds a channel: one node for standalone Redis; for a
//! Redis Cluster, the master serving the slot of the channel's hash tag
//! (`CRC16(channel) mod 16384`, as every key of a channel is tagged
//! `{channel}`), learnt from `CLUSTER SLOTS`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::resp::{self, Reply};

/// Hash slots in a Redis Cluster.
pub(crate) const SLOTS: usize = 16384;

/// CRC16-CCITT (XMODEM), the cluster's key hash.
pub(crate) fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of every key of `channel` (their hash tag is the name).
pub(crate) fn slot(channel: &str) -> u16 {
    crc16(channel.as_bytes()) % SLOTS as u16
}

/// The masters and which of them serves each slot.
pub(crate) struct Topology {
    /// `HOST:PORT` of each master.
    pub(crate) nodes: Vec<String>,
    /// Slot → index in `nodes` (`u16::MAX`: not served).
    pub(crate) slots: Box<[u16]>,
}

impl Topology {
    /// One standalone node serving everything.
    pub(crate) fn single(addr: &str) -> Topology {
        Topology {
            nodes: vec![addr.to_owned()],
            slots: vec![0; SLOTS].into_boxed_slice(),
        }
    }

    /// The node of `channel`.
    pub(crate) fn node_of(&self, channel: &str) -> usize {
        if self.nodes.len() == 1 {
            return 0;
        }
        match self.slots[slot(channel) as usize] {
            u16::MAX => 0,
            n => n as usize,
        }
    }
}

/// Asks the seeds in turn for `CLUSTER SLOTS`; the first answer wins.
pub(crate) fn discover(
    seeds: &[String],
    auth: &[Vec<u8>],
    timeout: Duration,
) -> Result<Topology, String> {
    let mut last = String::from("no seed node given");
    for seed in seeds {
        match ask(seed, auth, timeout) {
            Ok(t) => return Ok(t),
            Err(e) => last = format!("{seed}: {e}"),
        }
    }
    Err(last)
}

fn ask(seed: &str, auth: &[Vec<u8>], timeout: Duration) -> Result<Topology, String> {
    use std::net::ToSocketAddrs;
    let addr = seed
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("resolves to nothing")?;
    let mut sock = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut expect = 1;
    if !auth.is_empty() {
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        args.extend(auth.iter().map(Vec::as_slice));
        resp::command(&mut out, &args);
        expect += 1;
    }
    resp::command(&mut out, &[b"CLUSTER", b"SLOTS"]);
    sock.write_all(&out).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    let mut chunk = [0u8; 16384];
    while replies.len() < expect {
        let n = sock.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed the connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        replies.clear();
        while let Some((r, used)) = resp::parse(&buf[at..]).map_err(|e| e.to_string())? {
            replies.push(r);
            at += used;
        }
    }
    let r = replies.pop().ok_or("no reply")?;
    if let Reply::Error(e) = &r {
        return Err(format!("CLUSTER SLOTS: {e}"));
    }
    let mut topo = Topology {
        nodes: Vec::new(),
        slots: vec![u16::MAX; SLOTS].into_boxed_slice(),
    };
    for range in r.array().ok_or("CLUSTER SLOTS: not an array")? {
        let f = range.array().ok_or("CLUSTER SLOTS: bad range")?;
        let (Some(lo), Some(hi), Some(master)) = (
            f.first().and_then(Reply::u64),
            f.get(1).and_then(Reply::u64),
            f.get(2).and_then(Reply::array),
        ) else {
            return Err("CLUSTER SLOTS: bad range".into());
        };
        let host = master
            .first()
            .and_then(Reply::bytes)
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .filter(|h| !h.is_empty() && h != "?")
            .unwrap_or_else(|| addr.ip().to_string());
        let port = master
            .get(1)
            .and_then(Reply::u64)
            .ok_or("CLUSTER SLOTS: no port")?;
        let node = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let idx = match topo.nodes.iter().position(|n| *n == node) {
            Some(i) => i,
            None => {
                topo.nodes.push(node);
                topo.nodes.len() - 1
            }
        };
        for s in lo..=hi.min(SLOTS as u64 - 1) {
            topo.slots[s as usize] = idx as u16;
        }
    }
    if topo.nodes.is_empty() {
        return Err("CLUSTER SLOTS: no slot is served (is the cluster created?)".into());
    }
    Ok(topo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("bar"), 5061);
        let t = Topology::single("h:1");
        assert_eq!(t.node_of("anything"), 0);
    }
}
