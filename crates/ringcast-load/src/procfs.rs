//! Reading a process's CPU time and memory from /proc, so results can be
//! expressed per server CPU-second (the figure that survives a noisy host).

use std::fs;

/// CPU and memory of a process at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sample {
    /// User CPU seconds (from /proc/PID/stat, clock-tick resolution).
    pub user_s: f64,
    /// System CPU seconds.
    pub sys_s: f64,
    /// Total on-CPU seconds from the scheduler (/proc/PID/task/*/schedstat,
    /// nanosecond resolution) when available, else user + system.
    pub cpu_s: f64,
    /// Resident set size in bytes (VmRSS).
    pub rss: u64,
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Samples process `pid`. `None` if it does not exist.
pub(crate) fn sample(pid: u32) -> Option<Sample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name, which may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line (11, 12 here).
    let tck = clk_tck();
    let user_s = f.get(11)?.parse::<f64>().ok()? / tck;
    let sys_s = f.get(12)?.parse::<f64>().ok()? / tck;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    let cpu_s = schedstat_seconds(pid).unwrap_or(user_s + sys_s);
    Some(Sample {
        user_s,
        sys_s,
        cpu_s,
        rss,
    })
}

/// Sum of on-CPU time over all threads, in seconds.
fn schedstat_seconds(pid: u32) -> Option<f64> {
    let mut total_ns = 0u128;
    for entry in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = entry.ok()?.path().join("schedstat");
        let s = fs::read_to_string(path).ok()?;
        total_ns += s.split_whitespace().next()?.parse::<u128>().ok()?;
    }
    Some(total_ns as f64 / 1e9)
}

/// CPU seconds this process has used (all threads).
pub(crate) fn self_cpu_seconds() -> f64 {
    // SAFETY: `rusage` is plain integers and timevals, for which all-zero
    // bytes are a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the `rusage` we pass, which outlives
    // the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The difference between two samples.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Delta {
    pub user_s: f64,
    pub sys_s: f64,
    pub cpu_s: f64,
    pub rss_before: u64,
    pub rss_after: u64,
}

impl Delta {
    /// `b - a`.
    pub(crate) fn between(a: Sample, b: Sample) -> Delta {
        Delta {
            user_s: b.user_s - a.user_s,
            sys_s: b.sys_s - a.sys_s,
            cpu_s: b.cpu_s - a.cpu_s,
            rss_before: a.rss,
            rss_after: b.rss,
        }
    }

    /// Several processes' deltas added up (CPU and RSS alike).
    pub(crate) fn sum(ds: &[Delta]) -> Delta {
        ds.iter().fold(Delta::default(), |acc, d| Delta {
            user_s: acc.user_s + d.user_s,
            sys_s: acc.sys_s + d.sys_s,
            cpu_s: acc.cpu_s + d.cpu_s,
            rss_before: acc.rss_before + d.rss_before,
            rss_after: acc.rss_after + d.rss_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss > 0);
        assert!(s.cpu_s >= 0.0 && s.user_s >= 0.0);
    }

    #[test]
    fn deltas_add_up() {
        let d = |cpu: f64, rss: u64| Delta {
            user_s: cpu / 2.0,
            sys_s: cpu / 2.0,
            cpu_s: cpu,
            rss_before: rss,
            rss_after: rss * 2,
        };
        let s = Delta::sum(&[d(1.0, 10), d(0.5, 5)]);
        assert_eq!((s.cpu_s, s.user_s, s.sys_s), (1.5, 0.75, 0.75));
        assert_eq!((s.rss_before, s.rss_after), (15, 30));
        assert_eq!(Delta::sum(&[]).cpu_s, 0.0);
    }
}
