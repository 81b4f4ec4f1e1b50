//! What a Raft task does beside its turns, the same for a config-file node ([`crate::node`])
//! and a PD-mode store ([`crate::store::serve`]): it records its durable index (or each
//! region's) off the Raft thread.

use std::time::{Duration, Instant};

/// How often the durable index is recorded outside RocksDB.
pub const RECORD_DURABLE_EVERY: Duration = Duration::from_secs(5);

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
