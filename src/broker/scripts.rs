//! The Lua scripts that make Redis the channel engine: each runs atomically,
//! so a publication is numbered, kept and announced in one step, and a read
//! sees the epoch, the top offset and the entries of one instant.
//!
//! Keys of channel `C` share the hash tag `{C}` (one cluster slot):
//! `rc:{C}:m` is the meta hash (`e` epoch, `o` latest offset), `rc:{C}:s`
//! the stream (entry id `OFFSET-0`, fields `t` ms since the epoch of Redis's
//! clock and `p` payload), and `rc:{C}` the pub/sub channel, whose messages
//! are `EPOCH OFFSET PAYLOAD`.

/// Numbers and keeps a publication, then publishes it.
/// KEYS: meta, stream. ARGV: payload, history size, history TTL ms, meta
/// TTL ms, an epoch to use if the channel has none, pub/sub channel,
/// `PUBLISH` or `SPUBLISH`. Returns `{epoch, offset}`.
pub(crate) const PUBLISH: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('HSET', KEYS[1], 'e', epoch)
  redis.call('DEL', KEYS[2])
end
local top = redis.call('HINCRBY', KEYS[1], 'o', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local size = tonumber(ARGV[2])
if size > 0 then
  local t = redis.call('TIME')
  local ms = t[1] * 1000 + math.floor(t[2] / 1000)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', size, string.format('%d-0', top), 't', ms, 'p', ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
redis.call(ARGV[7], ARGV[6], epoch .. ' ' .. string.format('%d', top) .. ' ' .. ARGV[1])
return {epoch, top}
"#;

/// Reads a channel's position and entries (creating its epoch if it has
/// none, so a subscribe always learns one).
/// KEYS: meta, stream. ARGV: mode (`pos`, `since` or `last`), since
/// offset, limit, history size, history TTL ms, meta TTL ms, an epoch to
/// use if the channel has none, the epoch `since` belongs to (`0`: any; if
/// it is not the channel's, the read starts at the oldest entry kept, so a
/// reader that lost an epoch gets all of the new one that is left). Returns `{epoch, top, {{id, t, payload}...}}`,
/// oldest first; only entries within the last `size` offsets and younger
/// than the TTL.
pub(crate) const READ: &str = r#"
local m = redis.call('HMGET', KEYS[1], 'e', 'o')
local epoch = m[1]
if not epoch then
  epoch = ARGV[7]
  redis.call('HSET', KEYS[1], 'e', epoch)
  redis.call('DEL', KEYS[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
local top = tonumber(m[2]) or 0
local out = {}
if ARGV[1] == 'pos' or top == 0 then
  return {epoch, top, out}
end
local size = tonumber(ARGV[4])
local limit = tonumber(ARGV[3])
local low = top - size + 1
if low < 1 then low = 1 end
local t = redis.call('TIME')
local cutoff = t[1] * 1000 + math.floor(t[2] / 1000) - tonumber(ARGV[5])
local entries
if ARGV[1] == 'since' then
  local from = tonumber(ARGV[2]) + 1
  if ARGV[8] ~= '0' and ARGV[8] ~= epoch then from = low end
  if from < low then from = low end
  entries = redis.call('XRANGE', KEYS[2], string.format('%d-0', from), '+', 'COUNT', limit)
else
  entries = redis.call('XREVRANGE', KEYS[2], '+', string.format('%d-0', low), 'COUNT', limit)
end
local n = #entries
for i = 1, n do
  local e = entries[i]
  if ARGV[1] == 'last' then e = entries[n - i + 1] end
  local f = e[2]
  local ts, p
  for j = 1, #f, 2 do
    if f[j] == 't' then ts = tonumber(f[j + 1]) elseif f[j] == 'p' then p = f[j + 1] end
  end
  if ts and ts >= cutoff and p then
    out[#out + 1] = {e[1], p}
  end
end
return {epoch, top, out}
"#;

/// Drops presence entries past their expiry (`now` in ms is set), each
/// removal announced once: `ZREM` answers 1 to one caller only, so of all
/// the nodes sweeping, one publishes the `leave`. KEYS: zset, users;
/// ARGV[1] pub/sub channel, ARGV[2] `PUBLISH` or `SPUBLISH` if the
/// channel has join/leave events, else `0`.
const SWEEP: &str = r#"
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 1, #dead do
  if redis.call('ZREM', KEYS[1], dead[i]) == 1 then
    local u = redis.call('HGET', KEYS[2], dead[i]) or '-'
    redis.call('HDEL', KEYS[2], dead[i])
    if ARGV[2] ~= '0' then redis.call(ARGV[2], ARGV[1], 'L ' .. dead[i] .. ' ' .. u) end
  end
end
"#;

const NOW: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
"#;

/// Presence of a channel across nodes: KEYS zset (client → expiry ms),
/// users hash (client → `-` or `u:SUB`). Joins and leaves are published
/// on the channel's pub/sub as `J CLIENT USER` / `L CLIENT USER`.
pub(crate) fn presence_scripts() -> [String; 4] {
    let add = format!(
        "{NOW}{SWEEP}
local ttl = tonumber(ARGV[3])
local added = redis.call('ZADD', KEYS[1], now + ttl, ARGV[4])
redis.call('HSET', KEYS[2], ARGV[4], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
redis.call('PEXPIRE', KEYS[2], ttl * 2)
if added == 1 and ARGV[2] ~= '0' then redis.call(ARGV[2], ARGV[1], 'J ' .. ARGV[4] .. ' ' .. ARGV[5]) end
return added"
    );
    let remove = format!(
        "{NOW}{SWEEP}
local u = redis.call('HGET', KEYS[2], ARGV[3]) or '-'
local removed = redis.call('ZREM', KEYS[1], ARGV[3])
redis.call('HDEL', KEYS[2], ARGV[3])
if removed == 1 and ARGV[2] ~= '0' then redis.call(ARGV[2], ARGV[1], 'L ' .. ARGV[3] .. ' ' .. u) end
return removed"
    );
    // ARGV[3] ttl, ARGV[4..] pairs of client, user.
    let refresh = format!(
        "{NOW}{SWEEP}
local ttl = tonumber(ARGV[3])
for i = 4, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
redis.call('PEXPIRE', KEYS[2], ttl * 2)
return 1"
    );
    // ARGV[3] most clients listed. Returns {count, {client, user, ...}}.
    let read = format!(
        "{NOW}{SWEEP}
local count = redis.call('ZCARD', KEYS[1])
local out = {{}}
if tonumber(ARGV[3]) > 0 then
  local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)
  for i = 1, #ids do
    out[#out + 1] = ids[i]
    out[#out + 1] = redis.call('HGET', KEYS[2], ids[i]) or '-'
  end
end
return {{count, out}}"
    );
    [add, remove, refresh, read]
}

/// A presence user as stored: `-` (none) or `u:SUB`.
pub(crate) fn encode_user(user: Option<&str>) -> Vec<u8> {
    match user {
        None => b"-".to_vec(),
        Some(u) => format!("u:{u}").into_bytes(),
    }
}

/// The user of a stored presence entry.
pub(crate) fn decode_user(stored: &[u8]) -> Option<Box<str>> {
    let u = stored.strip_prefix(b"u:")?;
    Some(String::from_utf8_lossy(u).into())
}

/// A join/leave announcement: `(join, client, user)`.
pub(crate) fn split_event(msg: &[u8]) -> Option<(bool, &str, Option<Box<str>>)> {
    let join = match msg.get(..2)? {
        b"J " => true,
        b"L " => false,
        _ => return None,
    };
    let rest = &msg[2..];
    let sp = rest.iter().position(|&b| b == b' ')?;
    let client = std::str::from_utf8(&rest[..sp]).ok()?;
    Some((join, client, decode_user(&rest[sp + 1..])))
}

/// Presence keys of `channel`: the expiry zset and the users hash.
pub(crate) fn presence_keys(channel: &str) -> [Vec<u8>; 2] {
    [
        format!("rc:{{{channel}}}:pz").into_bytes(),
        format!("rc:{{{channel}}}:pu").into_bytes(),
    ]
}

/// The SHA-1 Redis names a script by (`EVALSHA`).
pub(crate) fn sha(script: &str) -> String {
    sha1_smol::Sha1::from(script).digest().to_string()
}

/// Redis's keys of `channel`: meta hash, stream, pub/sub channel.
pub(crate) fn keys(channel: &str) -> [Vec<u8>; 3] {
    [
        format!("rc:{{{channel}}}:m").into_bytes(),
        format!("rc:{{{channel}}}:s").into_bytes(),
        format!("rc:{{{channel}}}").into_bytes(),
    ]
}

/// The channel name in a pub/sub channel name `rc:{C}`.
pub(crate) fn channel_of(pubsub: &[u8]) -> Option<&str> {
    let inner = pubsub.strip_prefix(b"rc:{")?.strip_suffix(b"}")?;
    std::str::from_utf8(inner).ok()
}

/// Splits a pub/sub message into epoch, offset and payload.
pub(crate) fn split_message(msg: &[u8]) -> Option<(u64, u64, &[u8])> {
    let sp = msg.iter().position(|&b| b == b' ')?;
    let epoch = std::str::from_utf8(&msg[..sp]).ok()?.parse().ok()?;
    let rest = &msg[sp + 1..];
    let sp = rest.iter().position(|&b| b == b' ')?;
    let offset = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
    Some((epoch, offset, &rest[sp + 1..]))
}

/// The offset in a stream entry id `OFFSET-0`.
pub(crate) fn entry_offset(id: &[u8]) -> Option<u64> {
    let end = id.iter().position(|&b| b == b'-').unwrap_or(id.len());
    std::str::from_utf8(&id[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_messages() {
        let [m, s, p] = keys("chat:1");
        assert_eq!(
            (&m[..], &s[..], &p[..]),
            (
                &b"rc:{chat:1}:m"[..],
                &b"rc:{chat:1}:s"[..],
                &b"rc:{chat:1}"[..]
            )
        );
        assert_eq!(channel_of(&p), Some("chat:1"));
        assert_eq!(channel_of(b"other"), None);
        assert_eq!(
            split_message(b"7 12 {\"a\": 1}"),
            Some((7, 12, &b"{\"a\": 1}"[..]))
        );
        assert_eq!(split_message(b"7 12"), None);
        assert_eq!(entry_offset(b"42-0"), Some(42));
        assert_eq!(sha("return 1").len(), 40);
        assert_eq!(
            split_event(b"J c-1 u:ann b"),
            Some((true, "c-1", Some("ann b".into())))
        );
        assert_eq!(split_event(b"L c-2 -"), Some((false, "c-2", None)));
        assert_eq!(split_event(b"7 1 x"), None);
        assert_eq!(decode_user(&encode_user(Some("x"))).as_deref(), Some("x"));
    }
}
