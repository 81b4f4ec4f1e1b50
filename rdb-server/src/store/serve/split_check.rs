//! Split checks: which regions a store leads have grown past a split threshold, and where to
//! split them (specs/009-regions).
//!
//! Every `check_interval` the store estimates each region it leads from RocksDB's size
//! approximations, which read no key (see `rdb_storage::range_stats`), and reads a region's
//! keys only when the estimate says it may be near a threshold: to count it exactly and, if it
//! is over, to find its middle key. The exact count decides, so a region never splits on an
//! estimate that is too high. Estimates can also be too low, mostly until the store knows the
//! region's own average entry size, which its first exact count gives (see
//! `rdb_storage::range_stats`), so the rule leaves room:
//!
//! - under an eighth of both thresholds, a region is never read;
//! - from an eighth, it is read the first time it is seen at its epoch version (by this
//!   store, since it leads it), which teaches the estimates its entry size, and then once
//!   every [`RECOUNT_EVERY`] checks, spread over the regions by id, so a region whose estimate
//!   stays low for any reason still splits, late;
//! - from half a threshold, it is also read once its estimate has grown by a sixteenth of a
//!   threshold since its last count, or by half of what that count lacked of a threshold (so
//!   one near the threshold is read again after a little growth).
//!
//! A region that stopped growing is not read again (but for the recount every
//! [`RECOUNT_EVERY`] checks).

use rdb_storage::range_stats::{RangeEstimate, RangeEstimator, RangeStats, SplitThresholds};
use rdb_storage::region::{self, Region};
use rdb_storage::Engine;

/// Checks between two exact counts of a region whose estimate is over an eighth of a
/// threshold, whatever that estimate does (ten minutes at the default interval).
pub const RECOUNT_EVERY: u64 = 60;

/// When regions split.
#[derive(Debug, Clone, Copy)]
pub struct SplitConfig {
    /// Approximate bytes of keys and values past which a region splits (TiKV's 96 MiB).
    pub region_split_size: u64,
    /// Keys past which a region splits (TiKV's 960,000).
    pub region_split_keys: u64,
    /// How often each region a store leads is checked.
    pub check_interval: std::time::Duration,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            region_split_size: 96 << 20,
            region_split_keys: 960_000,
            check_interval: std::time::Duration::from_secs(10),
        }
    }
}

impl SplitConfig {
    fn thresholds(&self) -> SplitThresholds {
        SplitThresholds {
            keys: self.region_split_keys.max(1),
            bytes: self.region_split_size.max(1),
        }
    }
}

/// A region's last exact count, kept by the store to decide when to count again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// The region's epoch version then.
    pub version: u64,
    /// The estimate then.
    pub estimate: RangeEstimate,
    /// Keys counted.
    pub keys: u64,
    /// Bytes counted.
    pub bytes: u64,
}

/// What checking one region found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measure {
    /// The region's epoch version when checked.
    pub version: u64,
    /// The estimate.
    pub estimate: RangeEstimate,
    /// The exact count, if the region was read; its middle key is set when the region is over
    /// a threshold (it should split there).
    pub counted: Option<RangeStats>,
}

impl Measure {
    /// Keys and bytes to report to PD: this check's exact count; else the last one (`last`)
    /// moved by what the estimate moved since; else the estimate.
    pub fn size(&self, last: Option<&Counted>) -> (u64, u64) {
        let moved = |counted: u64, then: u64, now: u64| {
            if now >= then {
                counted.saturating_add(now - then)
            } else {
                counted.saturating_sub(then - now)
            }
        };
        match (&self.counted, last.filter(|l| l.version == self.version)) {
            (Some(c), _) => (c.keys, c.bytes),
            (None, Some(l)) => (
                moved(l.keys, l.estimate.keys, self.estimate.keys),
                moved(l.bytes, l.estimate.bytes, self.estimate.bytes),
            ),
            (None, None) => (self.estimate.keys, self.estimate.bytes),
        }
    }

    /// The record to keep of this check's exact count, if it made one.
    pub fn counted(&self) -> Option<Counted> {
        self.counted.as_ref().map(|c| Counted {
            version: self.version,
            estimate: self.estimate,
            keys: c.keys,
            bytes: c.bytes,
        })
    }
}

/// Whether check number `check` reads region `id` (see the module docs), given its estimate
/// now and its last exact count.
pub fn needs_count(
    cfg: &SplitConfig,
    id: u64,
    version: u64,
    estimate: RangeEstimate,
    last: Option<&Counted>,
    check: u64,
) -> bool {
    let t = cfg.thresholds();
    // Parts of a threshold, in sixteenths: 2 is an eighth, 8 a half.
    let part = |v: u64, of: u64| u128::from(v) * 16 / u128::from(of);
    let near = part(estimate.keys, t.keys).max(part(estimate.bytes, t.bytes));
    if near < 2 {
        return false;
    }
    let Some(last) = last.filter(|l| l.version == version) else {
        return true;
    };
    if (check + id).is_multiple_of(RECOUNT_EVERY) {
        return true;
    }
    if near < 8 {
        return false;
    }
    let grew = |now: u64, then: u64, counted: u64, of: u64| {
        let by = now.saturating_sub(then);
        by >= of / 16 || by >= of.saturating_sub(counted) / 2
    };
    grew(estimate.keys, last.estimate.keys, last.keys, t.keys)
        || grew(estimate.bytes, last.estimate.bytes, last.bytes, t.bytes)
}

/// Checks `region` (check number `check`): estimates it with `estimator` (at the average
/// entry size of its last count, if any) and, if [`needs_count`] says so, counts it with
/// `count` (given its range and the thresholds past which the count must find the middle
/// key), then estimates it again at the average entry size just counted, to compare later
/// estimates with.
pub fn check_region(
    cfg: &SplitConfig,
    estimator: &RangeEstimator<'_>,
    region: &Region,
    last: Option<&Counted>,
    check: u64,
    count: impl FnOnce(&[u8], &[u8], SplitThresholds) -> rdb_storage::Result<RangeStats>,
) -> rdb_storage::Result<Measure> {
    let version = region::epoch(region).version;
    let (start, end) = (&region.start_key, &region.end_key);
    let entry_bytes = |keys: u64, bytes: u64| (keys > 0).then(|| bytes / keys);
    let estimate =
        estimator.estimate(start, end, last.and_then(|l| entry_bytes(l.keys, l.bytes)))?;
    if !needs_count(cfg, region.id, version, estimate, last, check) {
        return Ok(Measure {
            version,
            estimate,
            counted: None,
        });
    }
    let counted = count(start, end, cfg.thresholds())?;
    let estimate = match entry_bytes(counted.keys, counted.bytes) {
        Some(b) => estimator.estimate(start, end, Some(b))?,
        None => estimate,
    };
    Ok(Measure {
        version,
        estimate,
        counted: Some(counted),
    })
}

/// [`check_region`] for every region of `regions` in `engine`, reading keys through
/// [`Engine::range_stats`]; `last` gives a region's last exact count. A region that cannot be
/// checked comes back as an error of its own.
pub fn check_regions(
    cfg: &SplitConfig,
    engine: &Engine,
    regions: &[(Region, Option<Counted>)],
    check: u64,
) -> Vec<(u64, rdb_storage::Result<Measure>)> {
    let estimator = match engine.range_estimator() {
        Ok(e) => e,
        Err(e) => {
            let message = e.to_string();
            return regions
                .iter()
                .map(|(r, _)| {
                    let e = std::io::Error::other(message.clone());
                    (r.id, Err(rdb_storage::Error::Io(e)))
                })
                .collect();
        }
    };
    regions
        .iter()
        .map(|(r, last)| {
            let measure = check_region(cfg, &estimator, r, last.as_ref(), check, |s, e, t| {
                engine.range_stats(s, e, Some(t))
            });
            (r.id, measure)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdb_storage::region::{Peer, RegionEpoch};

    fn region(id: u64, start: &str, end: &str) -> Region {
        Region {
            id,
            start_key: start.into(),
            end_key: end.into(),
            epoch: Some(RegionEpoch {
                version: 2,
                conf_ver: 1,
            }),
            peers: vec![Peer {
                id: 1,
                store_id: 1,
                learner: false,
            }],
        }
    }

    fn cfg(keys: u64) -> SplitConfig {
        SplitConfig {
            region_split_keys: keys,
            ..SplitConfig::default()
        }
    }

    /// A database with `n` keys `{prefix}{i:05}` of 100-byte values, in memtables or flushed.
    fn engine_with(dir: &std::path::Path, ranges: &[(&str, usize)]) -> Engine {
        let engine = Engine::open(dir).expect("open");
        let mut sm = rdb_storage::StateMachine::new(engine.clone(), 1000).expect("sm");
        let mut index = 1;
        for (prefix, n) in ranges {
            for i in 0..*n {
                let cmd = rdb_proto::command::Command {
                    client_id: 0,
                    seq: 0,
                    stamp: 0,
                    op: Some(rdb_proto::command::command::Op::Put(
                        rdb_proto::command::Put {
                            key: format!("{prefix}{i:05}").into_bytes(),
                            value: vec![b'v'; 100],
                        },
                    )),
                };
                let entry = raft::prelude::Entry {
                    index,
                    term: 1,
                    data: prost::Message::encode_to_vec(&cmd).into(),
                    ..Default::default()
                };
                index += 1;
                sm.apply(&[entry]).expect("apply");
            }
        }
        engine
    }

    #[test]
    fn a_region_under_its_thresholds_is_estimated_and_no_key_is_read() {
        let dir = tempfile::tempdir().expect("dir");
        // Thresholds of 1,000 keys: 50 keys under "a" (a twentieth), 5,000 under "b", 700
        // under "c".
        let engine = engine_with(dir.path(), &[("a", 50), ("b", 5000), ("c", 700)]);
        let cfg = cfg(1000);
        let estimator = engine.range_estimator().expect("estimator");
        let small = region(7, "a", "b");
        for check in 1..=2 * RECOUNT_EVERY {
            let m = check_region(&cfg, &estimator, &small, None, check, |_, _, _| {
                panic!("check {check} read the keys of a region under an eighth of its thresholds")
            })
            .expect("check");
            assert!(m.counted.is_none());
            assert!(m.estimate.keys > 0, "50 keys estimated as none");
        }
        // The one over its threshold is read, once, and splits at its middle key.
        let big = region(8, "b", "c");
        let mut reads = 0;
        let m = check_region(&cfg, &estimator, &big, None, 1, |s, e, t| {
            reads += 1;
            engine.range_stats(s, e, Some(t))
        })
        .expect("check");
        assert_eq!(reads, 1);
        let counted = m.counted.clone().expect("counted");
        assert_eq!(counted.keys, 5000);
        assert_eq!(counted.middle.as_deref(), Some(&b"b02500"[..]));
        // Still over at the next check (its split did not happen; the store holds back a
        // region with a split in flight): read again, for the middle key.
        let last = m.counted();
        let again = check_region(&cfg, &estimator, &big, last.as_ref(), 2, |s, e, t| {
            engine.range_stats(s, e, Some(t))
        })
        .expect("check");
        assert!(again.counted.is_some_and(|c| c.middle.is_some()));
        // The one under its threshold is read the first time, to learn its entry size, with
        // no middle key; then not while it does not grow, but on its recount turn.
        let mid = region(9, "c", "");
        let m = check_region(&cfg, &estimator, &mid, None, 1, |s, e, t| {
            engine.range_stats(s, e, Some(t))
        })
        .expect("check");
        let counted = m.counted.clone().expect("counted the first time");
        assert_eq!((counted.keys, counted.middle), (700, None));
        let last = m.counted();
        for check in 2..2 * RECOUNT_EVERY {
            let turn = (check + mid.id).is_multiple_of(RECOUNT_EVERY);
            let m = check_region(&cfg, &estimator, &mid, last.as_ref(), check, |s, e, t| {
                assert!(turn, "check {check} read again a region that did not grow");
                engine.range_stats(s, e, Some(t))
            })
            .expect("check");
            assert_eq!(m.counted.is_some(), turn, "check {check}");
            // PD hears the count, not the estimate, while nothing changed.
            assert_eq!(m.size(last.as_ref()).0, 700, "check {check}");
        }
    }

    #[test]
    fn the_rule_reads_from_an_eighth_once_from_a_half_after_growth_and_all_now_and_then() {
        let cfg = cfg(1600);
        let est = |keys| RangeEstimate { keys, bytes: 0 };
        let (id, check, turn) = (3, 1, RECOUNT_EVERY - 3);
        let counted = |estimate, keys| Counted {
            version: 2,
            estimate: est(estimate),
            keys,
            bytes: 0,
        };
        // Under an eighth: never, not even on its recount turn.
        assert!(!needs_count(&cfg, id, 2, est(199), None, check));
        assert!(!needs_count(&cfg, id, 2, est(199), None, turn));
        // From an eighth: the first time at a version, then on its turns only.
        assert!(needs_count(&cfg, id, 2, est(200), None, check));
        let low = counted(200, 220);
        assert!(!needs_count(&cfg, id, 2, est(700), Some(&low), check));
        assert!(needs_count(&cfg, id, 2, est(700), Some(&low), turn));
        assert!(
            needs_count(&cfg, id, 3, est(700), Some(&low), check),
            "a new version"
        );
        // From a half: after growing by a sixteenth (100 keys) since the last count...
        let last = counted(800, 900);
        assert!(!needs_count(&cfg, id, 2, est(899), Some(&last), check));
        assert!(needs_count(&cfg, id, 2, est(900), Some(&last), check));
        // ...or by half of what it lacked (1,590 counted: 5 keys).
        let near = counted(800, 1590);
        assert!(!needs_count(&cfg, id, 2, est(804), Some(&near), check));
        assert!(needs_count(&cfg, id, 2, est(805), Some(&near), check));
        // Bytes count alike.
        let by_bytes = SplitConfig {
            region_split_size: 1 << 20,
            ..cfg
        };
        let bytes = RangeEstimate {
            keys: 0,
            bytes: 200 << 10,
        };
        assert!(needs_count(&by_bytes, id, 2, bytes, None, check));
    }
}
