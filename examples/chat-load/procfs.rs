//! A process's CPU time and memory from `/proc` (Linux), and raising this process's limit on
//! open files (idle mode holds thousands of sockets).

use std::time::Instant;

/// A process's CPU time (user + system, every thread) at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    pub cpu_secs: f64,
    pub at: Instant,
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `utime + stime` of `pid` (fields 14 and 15 of `/proc/PID/stat`), in seconds.
pub fn cpu(pid: u32) -> Option<CpuSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(CpuSample { cpu_secs: (utime + stime) as f64 / ticks_per_sec(), at: Instant::now() })
}

/// Resident memory of `pid` (`VmRSS` of `/proc/PID/status`), in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds used between two samples, and the share of one core that is.
pub fn cpu_between(a: CpuSample, b: CpuSample) -> (f64, f64) {
    let used = b.cpu_secs - a.cpu_secs;
    let wall = b.at.duration_since(a.at).as_secs_f64();
    (used, if wall > 0.0 { used / wall } else { 0.0 })
}

/// Raises the soft limit on open files to the hard limit (root may raise the hard one too);
/// returns the new soft limit.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit for getrlimit/setrlimit to read and write.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur >= want {
            return lim.rlim_cur;
        }
        let raised = libc::rlimit { rlim_cur: want, rlim_max: lim.rlim_max.max(want) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return want;
        }
        let soft = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
            return lim.rlim_max;
        }
        lim.rlim_cur
    }
}

/// CPU seconds the whole machine spent busy (every core, `/proc/stat`), to tell how much of a
/// run's CPU went to other processes.
pub fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy = v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?;
    Some(busy as f64 / ticks_per_sec())
}
