//! ringcast's pages in a real browser (`clients/browser`, `node --test`):
//! Debian's Chromium, driven by playwright-core, against this build's
//! server binary: the `/demo` chat across a server restart, a subscription
//! through network drops (recovered, exactly once, in order), refused
//! tokens (4001 once, no reconnect loop), permessage-deflate (Chromium's
//! offer accepted, compressed echoes and publications, the server's
//! counters), and wss:// (a page over https, a subscription over TLS).
//! Needs Node.js, npm, openssl and `/usr/bin/chromium` (`.ci/run` installs
//! them; set `CHROMIUM` for another path). playwright-core comes from the
//! committed lock file through `npm ci`; it never downloads a browser.

mod node;

use std::path::Path;

#[test]
fn the_demo_works_in_chromium() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).is_file(),
        "{chromium} not found: install Debian's chromium (apt-get install chromium), \
         or set CHROMIUM"
    );
    node::npm_ci(&dir, "playwright-core");
    node::run_suite(
        &dir,
        "the browser tests",
        &[
            ("RINGCAST_BIN", env!("CARGO_BIN_EXE_ringcast")),
            ("CHROMIUM", &chromium),
        ],
    );
}
