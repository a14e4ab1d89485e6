//! Test hooks on the whole core (`RINGCAST_FAILPOINTS=1` only): a core
//! failure and a stalled core, asked for by a client's message and acted on
//! here, outside any `catch_unwind`.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::warn;

use super::Shard;
use crate::app::CoreHook;

/// Set while a stalled core waits (`ringcast:stall-core`).
static STALLED: AtomicBool = AtomicBool::new(false);

impl Shard {
    /// Acts on a hook a client asked for while this pass's completions were
    /// handled: fail now, or let stalled cores go on.
    pub(super) fn run_core_hook(&mut self) {
        match self.core_hook {
            CoreHook::Fail => {
                panic!("failpoint: a core failure requested by a client (RINGCAST_FAILPOINTS=1)")
            }
            CoreHook::Resume => {
                self.core_hook = CoreHook::None;
                STALLED.store(false, Ordering::SeqCst);
            }
            CoreHook::None | CoreHook::Stall => {}
        }
    }

    /// `ringcast:stall-core`: what this pass queued (the hook's echo) goes
    /// out first, then the loop stops.
    pub(super) fn stall_if_asked(&mut self) -> io::Result<()> {
        if self.core_hook == CoreHook::Stall {
            self.core_hook = CoreHook::None;
            self.ring.enter()?;
            stall_until_resumed(self.id);
        }
        Ok(())
    }
}

/// Stops this core's loop until another core's client sends
/// `ringcast:resume-cores`, or a minute passes: what a core stuck behind
/// something slow looks like to its peers (their rings to it fill up).
fn stall_until_resumed(id: usize) {
    warn!(
        core = id,
        "failpoint: core stalled until ringcast:resume-cores"
    );
    STALLED.store(true, Ordering::SeqCst);
    let until = Instant::now() + Duration::from_secs(60);
    while STALLED.load(Ordering::SeqCst) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
    STALLED.store(false, Ordering::SeqCst);
}
