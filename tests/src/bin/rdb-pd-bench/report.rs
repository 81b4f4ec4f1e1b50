//! What one bench run measured, PD's process figures from /proc, and the two ways of printing
//! them (a short text, or one JSON line for scripts).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// PD's process as /proc shows it: CPU over the heartbeat phase, memory at its end.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcSample {
    pub pid: u32,
    /// CPU time (user + system) over the phase, as a percentage of one core.
    pub cpu_percent: Option<f64>,
    /// Resident memory at the end (VmRSS), KiB.
    pub rss_kib: Option<u64>,
    /// Peak resident memory (VmHWM), KiB.
    pub hwm_kib: Option<u64>,
}

impl ProcSample {
    /// CPU clock ticks (user + system) process `pid` has used so far.
    pub fn cpu_ticks(pid: u32) -> Option<u64> {
        stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// PD's figures: CPU between the tick counts `before` and `after` taken `wall` apart, and
    /// memory now.
    pub fn take(pid: u32, before: Option<u64>, after: Option<u64>, wall: Duration) -> ProcSample {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let cpu_percent = match (before, after) {
            (Some(b), Some(a)) if a >= b && !wall.is_zero() => {
                Some((a - b) as f64 / ticks_per_sec() as f64 / wall.as_secs_f64() * 100.0)
            }
            _ => None,
        };
        ProcSample {
            pid,
            cpu_percent,
            rss_kib: status_kib(&status, "VmRSS"),
            hwm_kib: status_kib(&status, "VmHWM"),
        }
    }
}

/// Clock ticks per second, the unit of /proc/PID/stat's times.
fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf reads a constant of the system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last closing parenthesis.
fn stat_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (the state).
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Name:   123 kB` line of /proc/PID/status, in KiB.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The median of `xs` (the mean of the middle two for an even count; 0 for none).
pub fn median(xs: &[u64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_unstable();
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2] as f64,
        n => (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0,
    }
}

/// Everything one run measured.
pub struct Report {
    pub stores: u64,
    pub regions: u64,
    pub concurrency: usize,
    /// Seconds of heartbeats asked for.
    pub secs: u64,
    /// Seconds the heartbeat phase took (the last answers come in after `secs`).
    pub run_secs: f64,
    /// How long `BootstrapRegions` took, and its request's size.
    pub seed_secs: f64,
    pub seed_bytes: usize,
    /// Region heartbeats answered without error in each second of the run.
    pub per_sec: Vec<u64>,
    /// Latency of each heartbeat answered without error, µs.
    pub latency_us: Histogram<u64>,
    /// Heartbeats that failed, by kind (PD's error code, `grpc` or `timeout`).
    pub errors: BTreeMap<String, u64>,
    pub last_error: String,
    pub store_heartbeat_errors: u64,
    /// Distinct regions answered without error at least once.
    pub regions_heartbeaten: u64,
    /// When every region had been heartbeaten once (one scheduling pass), seconds into the run.
    pub pass_secs: Option<f64>,
    /// Heartbeats PD answered with an operator.
    pub operators: u64,
    /// PD's process figures, when its pid is known.
    pub proc: Option<ProcSample>,
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

fn mib(kib: u64) -> f64 {
    round(kib as f64 / 1024.0, 1)
}

impl Report {
    /// Region heartbeats per second PD sustained: the median of the per-second rates.
    pub fn rate(&self) -> f64 {
        median(&self.per_sec)
    }

    fn ms(&self, q: f64) -> f64 {
        round(self.latency_us.value_at_quantile(q) as f64 / 1000.0, 2)
    }

    fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// A scheduling pass's time projected from the rate, when the run ended before one.
    pub fn pass_projected_secs(&self) -> Option<f64> {
        let rate = self.rate();
        (self.pass_secs.is_none() && rate > 0.0).then(|| round(self.regions as f64 / rate, 2))
    }

    /// One JSON object on one line.
    pub fn to_json(&self) -> String {
        let p = self.proc.as_ref();
        serde_json::json!({
            "stores": self.stores,
            "regions": self.regions,
            "replicas": crate::REPLICAS,
            "concurrency": self.concurrency,
            "secs": self.secs,
            "run_secs": round(self.run_secs, 2),
            "seed_secs": round(self.seed_secs, 2),
            "seed_bytes": self.seed_bytes,
            "heartbeats": self.latency_us.len(),
            "heartbeats_per_sec": self.rate(),
            "per_sec": self.per_sec,
            "p50_ms": self.ms(0.5),
            "p99_ms": self.ms(0.99),
            "max_ms": round(self.latency_us.max() as f64 / 1000.0, 2),
            "errors": self.error_total(),
            "errors_by_kind": self.errors,
            "last_error": self.last_error,
            "store_heartbeat_errors": self.store_heartbeat_errors,
            "regions_heartbeaten": self.regions_heartbeaten,
            "pass_secs": self.pass_secs.map(|s| round(s, 2)),
            "pass_projected_secs": self.pass_projected_secs(),
            "operators": self.operators,
            "pd_pid": p.map(|p| p.pid),
            "pd_cpu_percent": p.and_then(|p| p.cpu_percent).map(|c| round(c, 1)),
            "pd_rss_mib": p.and_then(|p| p.rss_kib).map(mib),
            "pd_hwm_mib": p.and_then(|p| p.hwm_kib).map(mib),
        })
        .to_string()
    }

    /// A short report for people.
    pub fn to_text(&self) -> String {
        let mut t = format!(
            "PD heartbeat bench: {} stores, {} regions ({} peers each), {} concurrent region \
             heartbeats for {} s\n",
            self.stores,
            self.regions,
            crate::REPLICAS,
            self.concurrency,
            self.secs
        );
        t += &format!(
            "seeding:    BootstrapRegions of {} regions ({:.1} MiB) took {:.2} s\n",
            self.regions,
            self.seed_bytes as f64 / (1 << 20) as f64,
            self.seed_secs
        );
        t += &format!(
            "heartbeats: {} answered, {} failed; {} per second (median of the per-second rates)\n",
            self.latency_us.len(),
            self.error_total(),
            self.rate()
        );
        if self.error_total() > 0 {
            let kinds: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            t += &format!(
                "            failed by kind: {}; last: {}\n",
                kinds.join(", "),
                self.last_error
            );
        }
        t += &format!(
            "latency:    p50 {} ms, p99 {} ms, max {} ms\n",
            self.ms(0.5),
            self.ms(0.99),
            round(self.latency_us.max() as f64 / 1000.0, 2)
        );
        t += &match (self.pass_secs, self.pass_projected_secs()) {
            (Some(s), _) => format!(
                "pass:       every region heartbeaten once in {s:.2} s (one scheduling pass)\n"
            ),
            (None, Some(p)) => format!(
                "pass:       {} of {} regions heartbeaten in {:.1} s; a full pass would take about \
                 {p} s at the median rate\n",
                self.regions_heartbeaten, self.regions, self.run_secs
            ),
            (None, None) => format!(
                "pass:       {} of {} regions heartbeaten; no rate to project a pass from\n",
                self.regions_heartbeaten, self.regions
            ),
        };
        t += &format!("operators:  {} answered\n", self.operators);
        if self.store_heartbeat_errors > 0 {
            t += &format!(
                "stores:     {} store heartbeats failed\n",
                self.store_heartbeat_errors
            );
        }
        t += &match &self.proc {
            None => "PD process: pid unknown (give --pd-pid), no CPU or memory figures\n".into(),
            Some(p) => {
                let or_unknown = |x: Option<String>| x.unwrap_or_else(|| "unknown".into());
                format!(
                    "PD process: pid {}, CPU {}% of one core over the run, RSS {} MiB, peak {} MiB\n",
                    p.pid,
                    or_unknown(p.cpu_percent.map(|c| format!("{c:.0}"))),
                    or_unknown(p.rss_kib.map(|k| mib(k).to_string())),
                    or_unknown(p.hwm_kib.map(|k| mib(k).to_string())),
                )
            }
        };
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (rdb pd (x)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 150 25 0 0 20 0 9 0";
        assert_eq!(stat_ticks(stat), Some(175));
        assert_eq!(stat_ticks("4242 (rdb-pd) S 1"), None);
    }

    #[test]
    fn memory_is_read_from_its_status_lines() {
        let status = "Name:\trdb-pd\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(102_400));
        assert_eq!(status_kib(status, "VmHWM"), Some(204_800));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn this_process_has_cpu_ticks_and_memory() {
        let pid = std::process::id();
        assert!(ProcSample::cpu_ticks(pid).is_some());
        let p = ProcSample::take(pid, Some(0), Some(0), Duration::from_secs(1));
        assert_eq!(p.cpu_percent, Some(0.0));
        assert!(p.rss_kib.is_some_and(|k| k > 0) && p.hwm_kib.is_some_and(|k| k > 0));
    }

    #[test]
    fn median_of_odd_even_and_no_rates() {
        assert_eq!(median(&[5, 1, 3]), 3.0);
        assert_eq!(median(&[4, 1, 3, 2]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
