//! Per-channel options (history, presence, who may publish), chosen by the
//! first `[[channels]]` pattern that matches a channel's name, else the
//! flags' defaults.
//!
//! The owner resolves them once, when it creates a channel's stream, and
//! keeps them with it (history size and age). The core a request arrives
//! on resolves them for the checks that answer the client at once
//! (`allow_publish` on a publish, `presence`/`join_leave` on a subscribe,
//! history and presence requests): a few string comparisons per request,
//! beside the request's own JSON parse; fan-out never resolves them.

use std::time::Duration;

/// What a channel keeps and allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelOptions {
    /// Publications kept for history and recovery (0: none, and the
    /// `history` request is refused with `history_disabled`).
    pub history_size: u32,
    /// Oldest publication age history still serves.
    pub history_ttl: Duration,
    /// Whether the owner keeps the channel's subscribers for `presence`.
    pub presence: bool,
    /// Whether subscribers may ask for `join`/`leave` events.
    pub join_leave: bool,
    /// Whether `/ws` clients may publish (else only the HTTP API and an
    /// embedding program's `Publisher`).
    pub allow_publish: bool,
}

impl ChannelOptions {
    /// Whether the owner tracks who is subscribed (presence or join/leave
    /// need the same list).
    pub fn tracked(&self) -> bool {
        self.presence || self.join_leave
    }
}

impl Default for ChannelOptions {
    /// The flags' defaults: recovery works for a chat-like app out of the
    /// box (100 publications, five minutes), presence and join/leave cost
    /// memory and traffic per subscriber, so they are opt-in.
    fn default() -> ChannelOptions {
        ChannelOptions {
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            presence: false,
            join_leave: false,
            allow_publish: true,
        }
    }
}

/// A pattern and the options of the channels it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelRule {
    /// A channel name in which each `*` matches any run of characters
    /// (`chat:*`, `team:*:chat`, `*`).
    pub pattern: String,
    /// Options for matching channels.
    pub options: ChannelOptions,
}

impl ChannelRule {
    /// Whether the rule applies to `channel`.
    pub fn matches(&self, channel: &str) -> bool {
        glob(&self.pattern, channel)
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of
/// characters (none included) and everything else itself. Greedy from the
/// left, which is exact for `*`-only globs: each literal piece is taken at
/// its first occurrence after the previous one, the last piece at the end.
fn glob(pattern: &str, name: &str) -> bool {
    let mut pieces = pattern.split('*');
    let first = pieces.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Checks a rule's pattern: non-empty, and channel-name characters around
/// its `*`s.
pub fn validate_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("empty pattern".into());
    }
    if pattern.len() > super::name::MAX_CHANNEL_LEN {
        return Err(format!(
            "pattern {pattern:?} is longer than a channel name may be"
        ));
    }
    let literal: String = pattern.split('*').collect::<Vec<_>>().join("a");
    if !literal.is_empty() {
        super::name::check(&literal)
            .map_err(|e| format!("pattern {pattern:?}: {}", e.split(':').next().unwrap_or(&e)))?;
    }
    Ok(())
}

/// The rules in order, and the options for channels none matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelRules {
    /// Tried in order; the first match wins.
    pub rules: Vec<ChannelRule>,
    /// For channels no rule matches (the flags).
    pub default: ChannelOptions,
}

impl ChannelRules {
    /// The options of `channel`.
    pub fn resolve(&self, channel: &str) -> &ChannelOptions {
        self.rules
            .iter()
            .find(|r| r.matches(channel))
            .map_or(&self.default, |r| &r.options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_match_wins_and_the_default_covers_the_rest() {
        let chat = ChannelOptions {
            presence: true,
            ..ChannelOptions::default()
        };
        let quiet = ChannelOptions {
            history_size: 0,
            ..ChannelOptions::default()
        };
        let rules = ChannelRules {
            rules: vec![
                ChannelRule {
                    pattern: "chat:*".into(),
                    options: chat.clone(),
                },
                ChannelRule {
                    pattern: "chat:lobby".into(),
                    options: quiet.clone(),
                },
                ChannelRule {
                    pattern: "ticks".into(),
                    options: quiet.clone(),
                },
            ],
            default: ChannelOptions::default(),
        };
        assert_eq!(rules.resolve("chat:lobby"), &chat);
        assert_eq!(rules.resolve("ticks"), &quiet);
        assert_eq!(rules.resolve("ticks2"), &ChannelOptions::default());
        assert_eq!(rules.resolve("chat"), &ChannelOptions::default());
    }

    #[test]
    fn patterns_are_checked() {
        assert!(validate_pattern("*").is_ok());
        assert!(validate_pattern("chat:*").is_ok());
        assert!(validate_pattern("exact").is_ok());
        assert!(validate_pattern("team:*:chat").is_ok());
        assert!(validate_pattern("**").is_ok());
        assert!(validate_pattern("").is_err());
        assert!(validate_pattern("a b*").is_err());
        assert!(validate_pattern("a\"*").is_err());
    }

    #[test]
    fn stars_match_any_run() {
        for (p, yes, no) in [
            (
                "chat:*",
                &["chat:", "chat:1", "chat:a:b"][..],
                &["chat", "xchat:1"][..],
            ),
            (
                "team:*:chat",
                &[
                    "team:7:chat",
                    "team::chat",
                    "team:a/b:chat",
                    "team:x:chat:y:chat",
                ],
                &["team:7:chatty", "team:7", "xteam:7:chat", "team:chat"],
            ),
            ("*", &["a", "anything"], &[]),
            ("*.log", &["a.log", ".log"], &["a.logs"]),
            ("a*a", &["aa", "aba"], &["a"]),
            ("exact", &["exact"], &["exact2", "exac"]),
        ] {
            for y in yes {
                assert!(glob(p, y), "{p} should match {y}");
            }
            for n in no {
                assert!(!glob(p, n), "{p} should not match {n}");
            }
        }
    }
}
