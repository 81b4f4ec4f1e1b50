//! What a Raft task does beside its turns, the same for a config-file node ([`crate::node`])
//! and a PD-mode store ([`crate::store::serve`]): it records its durable index (or each
//! region's) off the Raft thread, warns about slow synced writes, slow turns and apply lag,
//! and samples the disk gauges.

use std::time::{Duration, Instant};

use rdb_storage::Engine;
use slog::{o, warn, Logger};

/// A synced write slower than this is logged, as etcd does.
pub const SLOW_FSYNC: Duration = Duration::from_millis(100);
/// A Raft task turn slower than this is logged.
pub const SLOW_TURN: Duration = Duration::from_millis(200);
/// Apply further than this many entries behind commit is logged.
pub const APPLY_LAG_WARN: u64 = 10_000;
/// An apply lag is warned about at most this often.
const LAG_WARN_EVERY: Duration = Duration::from_secs(10);
/// How often the durable index is recorded outside RocksDB.
pub const RECORD_DURABLE_EVERY: Duration = Duration::from_secs(5);
/// How often the RocksDB size gauges are sampled.
const DISK_SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Writes a record of durable indexes (see `Engine::record_durable_index`) on a thread of its
/// own, at most every [`RECORD_DURABLE_EVERY`] and only when it changed, so the Raft thread
/// never waits for the file's fsync.
pub struct DurableRecorder<T> {
    thread: Option<std::thread::JoinHandle<()>>,
    at: Instant,
    last: T,
}

impl<T: PartialEq + Clone + Send + 'static> DurableRecorder<T> {
    /// A recorder that has recorded `initial` (nothing: an index of 0, no region) just now.
    pub fn new(initial: T) -> Self {
        DurableRecorder {
            thread: None,
            at: Instant::now(),
            last: initial,
        }
    }

    /// Starts `write` of `value()` on a thread of its own if the last write is over,
    /// [`RECORD_DURABLE_EVERY`] passed since it started, and the value is not the one recorded.
    pub fn offer(
        &mut self,
        now: Instant,
        value: impl FnOnce() -> T,
        write: impl FnOnce(T) + Send + 'static,
    ) {
        if self.thread.as_ref().is_some_and(|h| h.is_finished()) {
            self.thread = None;
        }
        if self.thread.is_some() || now.duration_since(self.at) < RECORD_DURABLE_EVERY {
            return;
        }
        let v = value();
        if v == self.last {
            return;
        }
        self.at = now;
        self.last = v.clone();
        self.thread = std::thread::Builder::new()
            .name("durable-index".into())
            .spawn(move || write(v))
            .ok();
    }

    /// Waits for a write under way (on the way out: it holds the database).
    pub fn join(&mut self) {
        join_chore(self.thread.take());
    }
}

/// Waits for a chore's thread (log-file compaction, durable-index record) on the way out: it
/// holds the database.
pub fn join_chore(handle: Option<std::thread::JoinHandle<()>>) {
    if let Some(h) = handle {
        // A panic there has ended the process already (see `logging::install_panic_hook`).
        let _ = h.join();
    }
}

/// The warnings of a Raft task about its disk and its apply, one log line each with fields;
/// a lag is warned about at most every 10 s.
#[derive(Default)]
pub struct Warnings {
    lag_warned: Option<Instant>,
}

impl Warnings {
    /// After a turn that took `turn`: records it in `rdb_raft_turn_seconds`, and warns about
    /// the slowest synced write of the Raft log since the last turn and about a slow turn.
    pub fn turn(&mut self, turn: Duration, logger: &Logger) {
        let m = crate::metrics::metrics();
        m.turn_seconds.observe(turn.as_secs_f64());
        let slowest = Duration::from_micros(
            m.slowest_fsync_us
                .swap(0, std::sync::atomic::Ordering::Relaxed),
        );
        if slowest > SLOW_FSYNC {
            warn!(logger, "slow synced write of the raft log"; "ms" => slowest.as_millis() as u64,
                "expected_ms" => SLOW_FSYNC.as_millis() as u64);
        }
        if turn > SLOW_TURN {
            warn!(logger, "slow raft turn"; "ms" => turn.as_millis() as u64,
                "expected_ms" => SLOW_TURN.as_millis() as u64);
        }
    }

    /// Warns if apply is more than [`APPLY_LAG_WARN`] entries behind commit (of `region`, on a
    /// store), unless a lag was warned about in the last 10 s.
    pub fn lag(&mut self, region: Option<u64>, commit: u64, applied: u64, logger: &Logger) {
        let lag = commit.saturating_sub(applied);
        if lag <= APPLY_LAG_WARN
            || self
                .lag_warned
                .is_some_and(|t| t.elapsed() < LAG_WARN_EVERY)
        {
            return;
        }
        self.lag_warned = Some(Instant::now());
        let logger = match region {
            Some(r) => logger.new(o!("region" => r)),
            None => logger.clone(),
        };
        warn!(logger, "apply is falling behind commit"; "lag" => lag, "commit" => commit,
            "applied" => applied);
    }
}

/// Samples the database's size into `rdb_rocksdb_sst_bytes` and
/// `rdb_rocksdb_pending_compaction_bytes`, its memory into `rdb_rocksdb_memory_bytes`, and the
/// process's resident set into `rdb_process_resident_bytes`, every 5 s.
#[derive(Default)]
pub struct DiskSampler {
    at: Option<Instant>,
}

impl DiskSampler {
    /// Samples `engine` if 5 s passed since the last sample.
    pub fn sample(&mut self, engine: &Engine) {
        if self.at.is_some_and(|t| t.elapsed() <= DISK_SAMPLE_EVERY) {
            return;
        }
        self.at = Some(Instant::now());
        let (sst, pending) = engine.disk_stats();
        let m = crate::metrics::metrics();
        m.rocksdb_sst_bytes.set(sst as i64);
        m.rocksdb_pending_compaction_bytes.set(pending as i64);
        let mem = engine.memory_stats();
        for (part, bytes) in [
            ("block_cache", mem.block_cache),
            ("block_cache_pinned", mem.block_cache_pinned),
            ("memtables", mem.memtables),
            ("table_readers", mem.table_readers),
        ] {
            m.rocksdb_memory_bytes
                .with_label_values(&[part])
                .set(bytes as i64);
        }
        if let Some(rss) = resident_bytes() {
            m.resident_bytes.set(rss as i64);
        }
    }
}

/// The process's resident set in bytes (`VmRSS` of /proc/self/status, in kB there).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A drain that keeps each event as `message key=value ...`.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<String>>>);

    impl slog::Drain for Lines {
        type Ok = ();
        type Err = slog::Never;

        fn log(&self, r: &slog::Record, kv: &slog::OwnedKVList) -> Result<(), slog::Never> {
            struct Line(String);
            impl slog::Serializer for Line {
                fn emit_arguments(
                    &mut self,
                    key: slog::Key,
                    val: &std::fmt::Arguments,
                ) -> slog::Result {
                    self.0 += &format!(" {key}={val}");
                    Ok(())
                }
            }
            let mut line = Line(r.msg().to_string());
            let _ = slog::KV::serialize(&r.kv(), r, &mut line);
            let _ = slog::KV::serialize(kv, r, &mut line);
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(line.0);
            Ok(())
        }
    }

    #[test]
    fn a_lag_is_warned_about_once_per_interval_naming_its_region() {
        let lines = Lines::default();
        let logger = Logger::root(slog::Drain::fuse(lines.clone()), o!());
        let mut w = Warnings::default();
        w.lag(Some(7), 100 + APPLY_LAG_WARN, 100, &logger);
        let got = lines.0.lock().unwrap().clone();
        assert_eq!(
            got.len(),
            0,
            "a lag at the threshold is not warned about: {got:?}"
        );
        w.lag(Some(7), 101 + APPLY_LAG_WARN, 100, &logger);
        // Within 10 s of the last warning: not again, whichever region.
        w.lag(Some(8), 50_000, 100, &logger);
        let got = lines.0.lock().unwrap().clone();
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("apply is falling behind commit")
                && got[0].contains("lag=10001")
                && got[0].contains("region=7"),
            "{got:?}"
        );
    }
}
