//! Who may connect and where: HS256 JWT verification and `Origin` checks
//! for the WebSocket upgrade.
//!
//! Pure functions over the request's token and headers; the caller decides
//! where the token comes from (query string, header) and answers 401/403.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use crate::http::Origin;

/// Seconds a token is still accepted after its `exp`, and before its `nbf`,
/// for clock skew between the issuer and this host; small, so a revoked
/// session's token dies promptly and a token minted for later is not usable
/// now.
pub(crate) const LEEWAY_SECS: u64 = 5;

/// What a valid token says about its holder.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct Claims {
    /// The subject (user or service id), for logs and metrics.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch; required, so no token lives
    /// forever.
    pub exp: u64,
    /// Not before, seconds since the Unix epoch; optional. A token is
    /// refused until this time (less the leeway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Channel patterns the holder may subscribe and publish to (see
    /// [`Claims::allows`]); absent means every channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
}

impl Claims {
    /// Whether subscribe/publish on `channel` is within the token's
    /// `channels` patterns. `None` → any channel; an empty list → none.
    ///
    /// A pattern is an exact name, `*` (any channel), or a prefix ending in
    /// `*`: `chat.*` matches `chat.room1` (and `chat.`), `chat*` matches
    /// `chat` and `chatroom`. A `*` anywhere else is literal and, since
    /// channel names cannot contain `*`, matches nothing.
    pub fn allows(&self, channel: &str) -> bool {
        let Some(patterns) = &self.channels else {
            return true;
        };
        patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => channel.starts_with(prefix),
            None => p == channel,
        })
    }
}

/// Checks tokens against one shared secret; built once at startup (cloned
/// per core if need be) and used by every upgrade.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

/// Why a token was refused, coarse on purpose: a client learns whether to
/// fetch a new token (expired), wait or fix its clock (not valid yet) or fix
/// its setup (missing, invalid), and an attacker learns nothing about which
/// check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No token, or an empty one.
    Missing,
    /// A genuine token past its `exp`.
    Expired,
    /// A genuine token before its `nbf`.
    NotYetValid,
    /// Malformed, badly signed, another algorithm, or missing claims.
    Invalid,
}

impl AuthError {
    /// Short static text for a 401 body.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing token",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not valid yet (nbf)",
            AuthError::Invalid => "invalid token",
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for AuthError {}

impl Verifier {
    /// A verifier for HS256 tokens signed with `secret`.
    ///
    /// Only HS256 is accepted, so a token cannot pick a weaker or different
    /// scheme (`alg: none`, or RS256 with the secret as a "public key");
    /// `exp` and `sub` are required; `nbf`, when present, is enforced with
    /// the same leeway as `exp` (RFC 7519 §4.1.5); a token carrying an `aud`
    /// is refused, as RFC 7519 §4.1.3 requires of a recipient that has no
    /// audience name.
    pub fn new(secret: &[u8]) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Verifier {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Checks a token's signature, algorithm, expiry and not-before time,
    /// and returns its claims.
    ///
    /// An expired or not-yet-valid token is reported as
    /// [`AuthError::Expired`] / [`AuthError::NotYetValid`] only once its
    /// signature has been verified, so a forged token never learns more
    /// than "invalid".
    pub fn verify(&self, token: Option<&str>) -> Result<Claims, AuthError> {
        let token = match token {
            Some(t) if !t.is_empty() => t,
            _ => return Err(AuthError::Missing),
        };
        match jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => match e.kind() {
                ErrorKind::ExpiredSignature => Err(AuthError::Expired),
                ErrorKind::ImmatureSignature => Err(AuthError::NotYetValid),
                _ => Err(AuthError::Invalid),
            },
        }
    }
}

/// Mints an HS256 token (tests, tooling).
///
/// # Panics
///
/// Never in practice: HMAC accepts any key length and `Claims` always
/// serializes.
pub fn sign(secret: &[u8], claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing of Claims cannot fail")
}

/// Whether a WebSocket upgrade's `Origin` is acceptable: the defence against
/// cross-site WebSocket hijacking (a page on another site opening a socket
/// with the user's cookies).
///
/// `allowed` empty → every origin allowed, whatever the header holds.
/// Otherwise the `Origin` header must equal one entry, ASCII
/// case-insensitively and ignoring one trailing `/` on either side (scheme
/// and host are case-insensitive; configs often carry a slash browsers never
/// send). The opaque origin `null` (sandboxed iframes, `file:` pages,
/// redirects) is a value like any other: refused unless listed.
///
/// A request with no `Origin` header is allowed: only browsers send it, and
/// hijacking needs a browser; non-browser clients can forge any origin
/// anyway, so refusing them would add no security, only breakage. An
/// `Origin` header that is present but empty, not UTF-8 or repeated
/// ([`Origin::Malformed`]) is not "no header": no browser sends one, and
/// letting it pass as absent would let it through any allow-list, so it is
/// refused whenever a list is set.
pub fn origin_allowed(allowed: &[String], origin: Origin<'_>) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let origin = match origin {
        Origin::Absent => return true,
        Origin::Malformed => return false,
        Origin::Value(v) => trim_slash(v),
    };
    allowed
        .iter()
        .any(|a| trim_slash(a).eq_ignore_ascii_case(origin))
}

fn trim_slash(s: &str) -> &str {
    s.strip_suffix('/').unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use std::time::{SystemTime, UNIX_EPOCH};

    const SECRET: &[u8] = b"test-secret-at-least-32-bytes-long!!";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn claims(exp: u64, channels: Option<&[&str]>) -> Claims {
        Claims {
            sub: "user-1".into(),
            exp,
            nbf: None,
            channels: channels.map(|c| c.iter().map(|s| s.to_string()).collect()),
        }
    }

    /// A token with an arbitrary header and claims, HMAC-signed with
    /// `alg`'s hash so only the header's algorithm differs from a good one.
    fn forge(alg: Algorithm, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    #[test]
    fn valid_token_round_trips() {
        let v = Verifier::new(SECRET);
        let c = claims(now() + 3600, Some(&["chat.*", "news"]));
        assert_eq!(v.verify(Some(&sign(SECRET, &c))), Ok(c));
        let c = claims(now() + 60, None);
        let token = sign(SECRET, &c);
        // `channels: None` is left out of the token, not sent as null.
        let payload = URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap();
        assert!(!String::from_utf8(payload).unwrap().contains("channels"));
        assert_eq!(v.verify(Some(&token)), Ok(c));
    }

    #[test]
    fn expired() {
        let v = Verifier::new(SECRET);
        let token = sign(SECRET, &claims(now() - 60, None));
        assert_eq!(v.verify(Some(&token)), Err(AuthError::Expired));
        let token = sign(SECRET, &claims(0, None));
        assert_eq!(v.verify(Some(&token)), Err(AuthError::Expired));
        // Within the leeway it still passes.
        let token = sign(SECRET, &claims(now() - 1, None));
        assert!(v.verify(Some(&token)).is_ok());
    }

    #[test]
    fn not_valid_yet() {
        let v = Verifier::new(SECRET);
        let with_nbf = |nbf| Claims {
            nbf: Some(nbf),
            ..claims(now() + 3600, None)
        };
        let token = sign(SECRET, &with_nbf(now() + 600));
        assert_eq!(v.verify(Some(&token)), Err(AuthError::NotYetValid));
        // Just beyond the leeway is still too early.
        let token = sign(SECRET, &with_nbf(now() + LEEWAY_SECS + 60));
        assert_eq!(v.verify(Some(&token)), Err(AuthError::NotYetValid));
        // Within the leeway, now and in the past it passes, nbf kept.
        for nbf in [now() + 1, now(), now() - 60, 0] {
            let c = with_nbf(nbf);
            assert_eq!(v.verify(Some(&sign(SECRET, &c))), Ok(c), "nbf {nbf}");
        }
        // No nbf: accepted, and not serialized as null.
        let c = claims(now() + 60, None);
        let token = sign(SECRET, &c);
        let payload = URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap();
        assert!(!String::from_utf8(payload).unwrap().contains("nbf"));
        assert_eq!(v.verify(Some(&token)), Ok(c));
        // Not yet valid, but forged: invalid, nothing more.
        let token = sign(b"another secret", &with_nbf(now() + 600));
        assert_eq!(v.verify(Some(&token)), Err(AuthError::Invalid));
        // A malformed nbf is invalid.
        let body = serde_json::json!({"sub": "u", "exp": now() + 60, "nbf": "later"});
        assert_eq!(
            v.verify(Some(&forge(Algorithm::HS256, &body))),
            Err(AuthError::Invalid)
        );
        // Both expired and not yet valid (a broken issuer): refused.
        let c = Claims {
            nbf: Some(now() + 600),
            ..claims(now() - 600, None)
        };
        assert!(v.verify(Some(&sign(SECRET, &c))).is_err());
    }

    #[test]
    fn expired_but_forged_is_invalid() {
        let token = sign(b"another secret", &claims(now() - 60, None));
        let v = Verifier::new(SECRET);
        assert_eq!(v.verify(Some(&token)), Err(AuthError::Invalid));
    }

    #[test]
    fn bad_signature() {
        let v = Verifier::new(SECRET);
        let token = sign(b"another secret", &claims(now() + 60, None));
        assert_eq!(v.verify(Some(&token)), Err(AuthError::Invalid));
        // Tampered claims under the original signature.
        let good = sign(SECRET, &claims(now() + 60, Some(&["a"])));
        let mut parts: Vec<&str> = good.split('.').collect();
        let evil = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(now() + 60, None)).unwrap());
        parts[1] = &evil;
        assert_eq!(v.verify(Some(&parts.join("."))), Err(AuthError::Invalid));
        // Truncated signature.
        assert_eq!(
            v.verify(Some(&good[..good.len() - 2])),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn wrong_algorithm() {
        let v = Verifier::new(SECRET);
        let body = serde_json::json!({"sub":"u","exp":now() + 60});
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            assert_eq!(
                v.verify(Some(&forge(alg, &body))),
                Err(AuthError::Invalid),
                "{alg:?}"
            );
        }
        // alg "none" with an empty signature.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(body.to_string());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            assert_eq!(v.verify(Some(&token)), Err(AuthError::Invalid), "{token}");
        }
    }

    #[test]
    fn garbage_and_missing() {
        let v = Verifier::new(SECRET);
        assert_eq!(v.verify(None), Err(AuthError::Missing));
        assert_eq!(v.verify(Some("")), Err(AuthError::Missing));
        for token in [
            "x",
            "a.b.c",
            "...",
            "Bearer abc",
            "eyJhbGciOiJIUzI1NiJ9.%%%.sig",
            "\u{0}\u{1}é",
        ] {
            assert_eq!(v.verify(Some(token)), Err(AuthError::Invalid), "{token}");
        }
    }

    #[test]
    fn missing_or_malformed_claims() {
        let v = Verifier::new(SECRET);
        let exp = now() + 60;
        for body in [
            serde_json::json!({"exp": exp}),
            serde_json::json!({"sub": "u"}),
            serde_json::json!({"sub": 5, "exp": exp}),
            serde_json::json!({"sub": "u", "exp": "soon"}),
            serde_json::json!({"sub": "u", "exp": exp, "channels": "chat"}),
            serde_json::json!({"sub": "u", "exp": exp, "aud": "elsewhere"}),
        ] {
            assert_eq!(
                v.verify(Some(&forge(Algorithm::HS256, &body))),
                Err(AuthError::Invalid),
                "{body}"
            );
        }
        // Unknown claims are fine.
        let body = serde_json::json!({"sub": "u", "exp": exp, "iat": 1, "role": "x"});
        assert_eq!(
            v.verify(Some(&forge(Algorithm::HS256, &body))),
            Ok(claims_sub("u", exp))
        );
    }

    fn claims_sub(sub: &str, exp: u64) -> Claims {
        Claims {
            sub: sub.into(),
            exp,
            nbf: None,
            channels: None,
        }
    }

    #[test]
    fn reasons() {
        assert_eq!(AuthError::Missing.reason(), "missing token");
        assert_eq!(AuthError::Expired.reason(), "token expired");
        assert_eq!(AuthError::Invalid.reason(), "invalid token");
        assert_eq!(AuthError::NotYetValid.reason(), "token not valid yet (nbf)");
    }

    #[test]
    fn channel_patterns() {
        let any = claims(0, None);
        assert!(any.allows("anything") && any.allows("x"));

        let none = claims(0, Some(&[]));
        assert!(!none.allows("a"));

        let star = claims(0, Some(&["*"]));
        assert!(star.allows("a") && star.allows("chat.room1"));

        let exact = claims(0, Some(&["news", "chat.lobby"]));
        assert!(exact.allows("news") && exact.allows("chat.lobby"));
        assert!(!exact.allows("new") && !exact.allows("news2") && !exact.allows("chat.lobby2"));

        let dotted = claims(0, Some(&["chat.*"]));
        assert!(dotted.allows("chat.room1") && dotted.allows("chat.") && dotted.allows("chat.a.b"));
        assert!(!dotted.allows("chat") && !dotted.allows("chatroom") && !dotted.allows("x.chat.a"));

        let bare = claims(0, Some(&["chat*"]));
        assert!(bare.allows("chat") && bare.allows("chatroom") && bare.allows("chat.x"));
        assert!(!bare.allows("cha") && !bare.allows("Chat"));

        // A `*` that is not last is literal, and so matches no real channel.
        let inner = claims(0, Some(&["a*b"]));
        assert!(!inner.allows("ab") && !inner.allows("axb"));

        let mixed = claims(0, Some(&["a", "b.*"]));
        assert!(mixed.allows("a") && mixed.allows("b.1") && !mixed.allows("c"));
    }

    #[test]
    fn origins() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let v = Origin::Value;
        // No list: anything goes, even a malformed header.
        assert!(origin_allowed(&[], v("https://evil.example")));
        assert!(origin_allowed(&[], v("null")));
        assert!(origin_allowed(&[], Origin::Absent));
        assert!(origin_allowed(&[], Origin::Malformed));

        let allowed = list(&["https://app.example.com", "http://localhost:8080/"]);
        assert!(origin_allowed(&allowed, v("https://app.example.com")));
        assert!(origin_allowed(&allowed, v("HTTPS://App.Example.COM")));
        assert!(origin_allowed(&allowed, v("https://app.example.com/")));
        assert!(origin_allowed(&allowed, v("http://localhost:8080")));
        assert!(origin_allowed(&allowed, v("http://localhost:8080/")));
        // No Origin: not a browser, so not a hijack.
        assert!(origin_allowed(&allowed, Origin::Absent));
        // Present but empty, non-UTF-8 or repeated: never "absent".
        assert!(!origin_allowed(&allowed, Origin::Malformed));

        for bad in [
            "https://evil.example",
            "http://app.example.com",
            "https://app.example.com:443",
            "https://app.example.com.evil.example",
            "https://sub.app.example.com",
            "null",
            "",
            "http://localhost:8081",
            "https://app.example.com//",
            "/",
        ] {
            assert!(!origin_allowed(&allowed, v(bad)), "{bad}");
        }
        // `null` passes only when listed explicitly.
        let with_null = list(&["https://app.example.com", "null"]);
        assert!(origin_allowed(&with_null, v("null")));
        assert!(origin_allowed(&with_null, v("NULL")));
        assert!(!origin_allowed(&with_null, Origin::Malformed));
        assert!(!origin_allowed(&with_null, v("https://evil.example")));
    }

    /// What a request's `Origin` header becomes, through the real parser,
    /// and whether it passes an allow-list.
    #[test]
    fn origin_headers_through_the_parser() {
        use crate::ws::handshake::{parse_http, Parsed, Progress, Target};
        const HEAD: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Sec-WebSocket-Version: 13\r\n";
        let allowed = vec!["https://app.example".to_string()];
        let cases: &[(&[u8], Origin, bool)] = &[
            (b"", Origin::Absent, true),
            (
                b"Origin: https://app.example\r\n",
                Origin::Value("https://app.example"),
                true,
            ),
            (
                b"origin:   https://app.example  \r\n",
                Origin::Value("https://app.example"),
                true,
            ),
            (b"Origin:\r\n", Origin::Malformed, false),
            (b"Origin:   \r\n", Origin::Malformed, false),
            (
                b"Origin: https://app.\xff\xfe\r\n",
                Origin::Malformed,
                false,
            ),
            (b"Origin: null\r\n", Origin::Value("null"), false),
            // An empty first header does not let a second one stand in.
            (
                b"Origin:\r\nOrigin: https://app.example\r\n",
                Origin::Malformed,
                false,
            ),
            // RFC 6454 §7.3: at most one Origin header.
            (
                b"Origin: https://app.example\r\nOrigin: https://app.example\r\n",
                Origin::Malformed,
                false,
            ),
        ];
        for &(headers, want, pass) in cases {
            let req = [HEAD, headers, b"\r\n"].concat();
            let got = match parse_http(&req, 8192, 0, |_| Some(Target::<(), ()>::WebSocket(()))) {
                Ok(Progress::Done(Parsed::Upgrade { creds, .. })) => creds.origin,
                other => panic!("not an upgrade: {other:?}"),
            };
            let shown = String::from_utf8_lossy(headers);
            assert_eq!(got, want, "{shown}");
            assert_eq!(origin_allowed(&allowed, got), pass, "{shown}");
            // Without a list every one of them passes.
            assert!(origin_allowed(&[], got), "{shown}");
        }
    }
}
