//! Files the server serves from its own binary: the browser SDK
//! (`clients/js/index.js`, plain JavaScript, so building the server needs
//! no Node), the `/demo` chat built on it (`clients/demo/index.html`) and
//! the operator's `/dashboard` (`clients/dashboard/index.html`). Each is
//! one self-contained file, so the pages work offline (no CDN).

use std::sync::OnceLock;

use super::Resource;

/// The SDK under a name that changes with the version, so it can be cached
/// for good.
pub(crate) const SDK_VERSIONED_PATH: &str = concat!("/ringcast-", env!("CARGO_PKG_VERSION"), ".js");

/// How long a browser may keep a file without asking again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caching {
    /// Revalidate every time (`no-cache` + `ETag`: a 304 costs a few bytes).
    Revalidate,
    /// For good: the name changes whenever the content does.
    Immutable,
}

/// One embedded file and the headers it is served with.
pub(crate) struct Asset {
    /// The file, as the repository has it.
    pub body: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    caching: Caching,
    etag: OnceLock<String>,
}

impl Asset {
    const fn new(body: &'static str, content_type: &'static str, caching: Caching) -> Asset {
        Asset {
            body,
            content_type,
            caching,
            etag: OnceLock::new(),
        }
    }

    /// The `ETag`: FNV-1a of the bytes, quoted; computed once.
    pub(crate) fn etag(&self) -> &str {
        self.etag
            .get_or_init(|| format!("\"{:016x}\"", crate::hub::name::fnv1a(self.body.as_bytes())))
    }

    /// The headers beyond type and length: `ETag`, `Cache-Control`, and
    /// `nosniff`/no framing for pages (the dashboard shows operator data).
    pub(crate) fn headers(&self) -> String {
        let cache = match self.caching {
            Caching::Revalidate => "no-cache",
            Caching::Immutable => "public, max-age=31536000, immutable",
        };
        let page = if self.content_type.starts_with("text/html") {
            "X-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n"
        } else {
            ""
        };
        format!(
            "ETag: {}\r\nCache-Control: {cache}\r\nX-Content-Type-Options: nosniff\r\n{page}",
            self.etag()
        )
    }

    /// Whether an `If-None-Match` value names this file's current version
    /// (RFC 9110 §13.1.2: `*`, or a list of tags compared weakly).
    pub(crate) fn matches(&self, if_none_match: &str) -> bool {
        let etag = self.etag();
        if_none_match
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
    }
}

const JS: &str = "text/javascript; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

static SDK: Asset = Asset::new(
    include_str!("../../clients/js/index.js"),
    JS,
    Caching::Revalidate,
);
static SDK_VERSIONED: Asset = Asset::new(SDK.body, JS, Caching::Immutable);
static DEMO: Asset = Asset::new(
    include_str!("../../clients/demo/index.html"),
    HTML,
    Caching::Revalidate,
);
static DASHBOARD: Asset = Asset::new(
    include_str!("../../clients/dashboard/index.html"),
    HTML,
    Caching::Revalidate,
);

/// The embedded file a resource serves, if it is one.
pub(crate) fn of(resource: Resource) -> Option<&'static Asset> {
    match resource {
        Resource::Sdk => Some(&SDK),
        Resource::SdkVersioned => Some(&SDK_VERSIONED),
        Resource::Demo => Some(&DEMO),
        Resource::Dashboard => Some(&DASHBOARD),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_embedded_with_stable_etags() {
        assert!(SDK.body.contains("export class Ringcast"));
        assert!(DEMO.body.contains("/ringcast.js"));
        assert!(DASHBOARD.body.contains("/api/stats"));
        assert_eq!(SDK.etag(), SDK_VERSIONED.etag());
        assert_eq!(SDK.etag().len(), 18);
        assert_ne!(SDK.etag(), DEMO.etag());
        assert!(SDK_VERSIONED.headers().contains("immutable"));
        assert!(SDK.headers().contains("no-cache"));
        assert!(!SDK.headers().contains("X-Frame-Options"));
        assert!(DASHBOARD.headers().contains("X-Frame-Options: DENY"));
        assert!(
            SDK_VERSIONED_PATH.starts_with("/ringcast-") && SDK_VERSIONED_PATH.ends_with(".js")
        );
    }

    #[test]
    fn if_none_match_compares_weakly_and_takes_lists() {
        let tag = SDK.etag().to_string();
        assert!(SDK.matches(&tag));
        assert!(SDK.matches(&format!("W/{tag}")));
        assert!(SDK.matches(&format!("\"x\", {tag}")));
        assert!(SDK.matches("*"));
        assert!(!SDK.matches("\"0000000000000000\""));
        assert!(!SDK.matches(""));
        assert!(!SDK.matches(&tag[1..]));
    }
}
