//! `parse_http` / `parse_request` on any bytes: the first byte picks the
//! head and body limits, the rest is the request (see `check_handshake`).
#![no_main]

#[path = "../../tests/targets/mod.rs"]
mod targets;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, buf)) = data.split_first() else {
        return;
    };
    let (max_head, max_body) = targets::HTTP_LIMITS[usize::from(pick) % targets::HTTP_LIMITS.len()];
    targets::check_handshake(buf, max_head, max_body);
});
