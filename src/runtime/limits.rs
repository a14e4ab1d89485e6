//! Process resource limits that bound how many connections a core can hold.

use tracing::{info, warn};

fn get(resource: libc::__rlimit_resource_t) -> Option<libc::rlimit> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass.
    (unsafe { libc::getrlimit(resource, &mut r) } == 0).then_some(r)
}

/// Raises the soft open-files limit to the hard limit: every connection is
/// a descriptor, and the default soft limit (often 1024) is far too low.
/// Used by the server, the baseline and the load generator alike.
pub fn raise_nofile() {
    let Some(mut r) = get(libc::RLIMIT_NOFILE) else {
        return;
    };
    if r.rlim_cur < r.rlim_max {
        let old = r.rlim_cur;
        r.rlim_cur = r.rlim_max;
        // SAFETY: setrlimit with a value we just read back.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } == 0 {
            info!("raised open-files limit from {old} to {}", r.rlim_cur);
        }
    }
}

/// Warns when limits will cap the server well below what the host could do.
pub(crate) fn warn_if_low(cores: usize) {
    if let Some(r) = get(libc::RLIMIT_NOFILE) {
        if r.rlim_cur < 65_536 {
            warn!(
                "open-files limit is {}: at most ~{} connections in total; raise it (tuning/limits.conf) for more",
                r.rlim_cur,
                r.rlim_cur.saturating_sub(16 * cores as u64 + 64)
            );
        }
    }
    if let Some(r) = get(libc::RLIMIT_MEMLOCK) {
        // Each core's rings need a few hundred KiB of locked memory on kernels
        // that still charge rings to RLIMIT_MEMLOCK.
        let need = 512 * 1024 * cores as u64;
        if r.rlim_cur != libc::RLIM_INFINITY && r.rlim_cur < need {
            warn!(
                "locked-memory limit is {} B; io_uring rings may fail to set up (want >= {need} B)",
                r.rlim_cur
            );
        }
    }
}
