//! A session fed a stream whole, in the chunk sizes the input names, with
//! and without `copy_masked`, and against the reference model (see
//! `FramesCase::from_bytes` for the input layout, `check_frames` for the
//! checks).
#![no_main]

#[path = "../../tests/targets/mod.rs"]
mod targets;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(case) = targets::FramesCase::from_bytes(data) {
        case.check();
    }
});
