//! Channel names: what a name may hold, and which core owns it.

/// The longest channel name, in bytes: names are keys in every core's
/// subscription table and are copied into every `message` frame, so they are
/// kept short.
pub const MAX_CHANNEL_LEN: usize = 128;

/// Checks a channel name: 1..=128 bytes of ASCII letters, digits and
/// `_ - . : / @`.
///
/// `*` is excluded because it is the wildcard in token claims and channel
/// rules (a channel named `chat.*` would be ambiguous), and quotes,
/// backslashes and control characters are excluded so a name can be copied
/// into JSON output without escaping.
pub(crate) fn check(name: &str) -> Result<(), String> {
    const RULE: &str = "channel names are 1 to 128 ASCII letters, digits and `_ - . : / @`";
    let cause = if name.is_empty() {
        "empty channel name".to_owned()
    } else if name.len() > MAX_CHANNEL_LEN {
        format!("channel name too long ({} bytes)", name.len())
    } else if let Some(c) = name.chars().find(|&c| !is_channel_char(c)) {
        format!("{c:?} is not allowed in a channel name")
    } else {
        return Ok(());
    };
    Err(format!("{cause}: {RULE}"))
}

fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/' | '@')
}

/// The core that owns `channel` out of `cores`: it sequences the channel's
/// publications, keeps its history and presence. FNV-1a, so every core
/// (and an embedding program's `Publisher`) computes the same owner
/// without talking to the others.
#[inline]
pub(crate) fn owner(channel: &str, cores: usize) -> usize {
    (fnv1a(channel.as_bytes()) % cores.max(1) as u64) as usize
}

/// 64-bit FNV-1a: cheap, stable across runs and builds (owners, `ETag`s).
#[inline]
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
