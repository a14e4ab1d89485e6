//! Process resource limits.

/// Raises the soft open-files limit to the hard one: every client is a
/// descriptor, and the usual soft default (1024) would cap a benchmark far
/// below what the host can hold. Returns the old and new soft limits if it
/// raised them; `None` if it was already at the hard limit or the calls
/// failed (the server then runs with what it has).
pub(crate) fn raise_nofile() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a live, writable `rlimit`; getrlimit only writes it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur >= lim.rlim_max {
        return None;
    }
    let old = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: `lim` is a live `rlimit` that setrlimit only reads; a soft
    // limit equal to the hard one is always allowed.
    (unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0).then_some((old, lim.rlim_cur))
}
