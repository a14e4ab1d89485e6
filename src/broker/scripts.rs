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
    }
}
