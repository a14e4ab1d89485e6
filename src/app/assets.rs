//! Files the server serves from its own binary: the browser SDK
//! (`clients/js/index.js`, plain JavaScript, so building the server needs
//! no Node) and the `/demo` chat built on it (`clients/demo/index.html`).

use std::sync::OnceLock;

/// The SDK module, as `clients/js/index.js` has it.
pub(crate) const SDK: &str = include_str!("../../clients/js/index.js");

/// The `/demo` chat page: one self-contained file importing `/ringcast.js`.
pub(crate) const DEMO: &str = include_str!("../../clients/demo/index.html");

/// The SDK under a name that changes with the version, so it can be cached
/// for good.
pub(crate) const SDK_VERSIONED_PATH: &str = concat!("/ringcast-", env!("CARGO_PKG_VERSION"), ".js");

/// The SDK's `ETag` (FNV-1a of its bytes, quoted), computed once.
pub(crate) fn sdk_etag() -> &'static str {
    static ETAG: OnceLock<String> = OnceLock::new();
    ETAG.get_or_init(|| format!("\"{:016x}\"", crate::hub::name::fnv1a(SDK.as_bytes())))
}

/// The headers of an SDK response: its `ETag`, and a cache lifetime —
/// for good under the versioned name, revalidated under the plain one.
pub(crate) fn sdk_headers(versioned: bool) -> String {
    let cache = if versioned {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    format!("ETag: {}\r\nCache-Control: {cache}\r\n", sdk_etag())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdk_is_embedded_with_a_stable_etag() {
        assert!(SDK.contains("export class Ringcast"));
        assert!(DEMO.contains("/ringcast.js"));
        assert_eq!(sdk_etag(), sdk_etag());
        assert_eq!(sdk_etag().len(), 18);
        assert!(sdk_headers(true).contains("immutable"));
        assert!(sdk_headers(false).contains("no-cache"));
        assert!(
            SDK_VERSIONED_PATH.starts_with("/ringcast-") && SDK_VERSIONED_PATH.ends_with(".js")
        );
    }
}
