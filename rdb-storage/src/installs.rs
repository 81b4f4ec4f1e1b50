//! [`Installs`]: the key ranges of the `data` family that snapshot installs are replacing, so
//! that no read ever sees a range half loaded.
//!
//! An install clears a range and loads it again from a file, in several writes. A read of keys
//! in that range meanwhile would see some of the old data, none, or part of the new. So every
//! read of user data says which keys it covers ([`Installs::check_start`] before it reads,
//! [`Installs::check_end`] after) and is refused (`Error::SnapshotInstalling`) if an install
//! of an overlapping range was under way when it started, or began or ended while it ran.
//! Reads of other ranges go on: a store installing one region's snapshot serves every other
//! region (a static node's install covers its whole family, so there every read waits).
//!
//! One registry per database, shared by every view of it ([`crate::Engine::region`]): user data
//! is shared, and the store's client service reads through the store's view.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use crate::{Error, Result};

/// A range of keys of the `data` family: from the first key, up to the second (exclusive).
pub(crate) type KeyRange = (Vec<u8>, Vec<u8>);

/// Starts and ends of installs remembered for reads that began before them. A read that began
/// before the oldest one remembered is refused whatever it read: installs are rare, and reads
/// are short, so that is a read that waited for a very long time.
const RECENT_EVENTS: usize = 64;

/// The installs of one database; see the module docs.
#[derive(Default)]
pub(crate) struct Installs(Mutex<State>);

#[derive(Default)]
struct State {
    /// Bumped at every start and every end of an install.
    seq: u64,
    /// Installs under way, by the number their start got; each with the ranges it replaces.
    active: BTreeMap<u64, Vec<KeyRange>>,
    /// The last [`RECENT_EVENTS`] starts and ends: the number each got, and its ranges.
    recent: VecDeque<(u64, Vec<KeyRange>)>,
}

/// An install under way, as [`Installs::begin`] recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InstallId(u64);

fn overlaps(ranges: &[KeyRange], lower: &[u8], upper: &[u8]) -> bool {
    ranges
        .iter()
        .any(|(l, u)| l.as_slice() < upper && lower < u.as_slice())
}

impl State {
    fn record(&mut self, ranges: Vec<KeyRange>) -> u64 {
        self.seq += 1;
        self.recent.push_back((self.seq, ranges));
        while self.recent.len() > RECENT_EVENTS {
            self.recent.pop_front();
        }
        self.seq
    }
}

impl Installs {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that an install starts replacing `ranges`: reads of them are refused until
    /// [`Installs::end`]. An install that fails half way never ends: its ranges stay refused
    /// (the failure stops the node; the next start finishes the install).
    pub(crate) fn begin(&self, ranges: Vec<KeyRange>) -> InstallId {
        let mut st = self.lock();
        let id = st.record(ranges.clone());
        st.active.insert(id, ranges);
        InstallId(id)
    }

    /// Records that the install `id` wrote its last batch.
    pub(crate) fn end(&self, id: InstallId) {
        let mut st = self.lock();
        if let Some(ranges) = st.active.remove(&id.0) {
            st.record(ranges);
        }
    }

    /// Before a read of `[lower, upper)`: refused if an install of an overlapping range is
    /// under way; otherwise the number to give [`Installs::check_end`] after the read.
    pub(crate) fn check_start(&self, lower: &[u8], upper: &[u8]) -> Result<u64> {
        let st = self.lock();
        if st.active.values().any(|r| overlaps(r, lower, upper)) {
            return Err(Error::SnapshotInstalling);
        }
        Ok(st.seq)
    }

    /// After a read of `[lower, upper)` that [`Installs::check_start`] let begin at `before`:
    /// refused if an install of an overlapping range began or ended since.
    pub(crate) fn check_end(&self, before: u64, lower: &[u8], upper: &[u8]) -> Result<()> {
        let st = self.lock();
        if st.seq == before {
            return Ok(());
        }
        let remembered = st.recent.front().is_some_and(|&(seq, _)| seq <= before + 1);
        let clashed = st
            .recent
            .iter()
            .any(|(seq, r)| *seq > before && overlaps(r, lower, upper));
        if !remembered || clashed {
            return Err(Error::SnapshotInstalling);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(l: &str, u: &str) -> KeyRange {
        (l.as_bytes().to_vec(), u.as_bytes().to_vec())
    }

    #[test]
    fn a_read_is_refused_only_when_an_install_of_its_keys_overlaps_it() {
        let installs = Installs::default();
        let started = installs.check_start(b"a", b"c").unwrap();
        let id = installs.begin(vec![range("m", "t")]);
        // Before and during: a read of other keys goes on, even one that began before the
        // install did; a read of the keys being replaced does not.
        installs.check_end(started, b"a", b"c").unwrap();
        assert!(matches!(
            installs.check_start(b"s", b"u"),
            Err(Error::SnapshotInstalling)
        ));
        let during = installs.check_start(b"t", b"z").unwrap();
        installs.check_end(during, b"t", b"z").unwrap();
        // A read of the range that began before the install started (or ended) is refused.
        let mut before = installs.check_start(b"a", b"b").unwrap();
        installs.end(id);
        installs.check_end(before, b"a", b"b").unwrap();
        let id = installs.begin(vec![range("a", "b")]);
        assert!(matches!(
            installs.check_end(before, b"a", b"b"),
            Err(Error::SnapshotInstalling)
        ));
        installs.end(id);
        before = installs.check_start(b"m", b"n").unwrap();
        installs.check_end(before, b"m", b"n").unwrap();
        let id = installs.begin(vec![range("m", "n")]);
        installs.end(id);
        assert!(matches!(
            installs.check_end(before, b"m", b"n"),
            Err(Error::SnapshotInstalling)
        ));
    }

    #[test]
    fn a_read_older_than_every_install_remembered_is_refused() {
        let installs = Installs::default();
        let before = installs.check_start(b"a", b"b").unwrap();
        for _ in 0..RECENT_EVENTS {
            let id = installs.begin(vec![range("x", "y")]);
            installs.end(id);
        }
        assert!(matches!(
            installs.check_end(before, b"a", b"b"),
            Err(Error::SnapshotInstalling)
        ));
        let fresh = installs.check_start(b"a", b"b").unwrap();
        installs.check_end(fresh, b"a", b"b").unwrap();
    }
}
