//! `parse_client` (`/ws` messages) and `parse_publish` (`POST
//! /api/publish` bodies) on the same bytes (see `check_ws_json`).
#![no_main]

#[path = "../../tests/targets/mod.rs"]
mod targets;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| targets::check_ws_json(data));
