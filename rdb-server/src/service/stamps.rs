//! PD-mode revisions (specs/018-versions): a store stamps every write it leads with a PD
//! timestamp fetched after the write reached it, so revisions order writes across regions: a
//! write acknowledged before another reached its leader has the smaller revision.
//!
//! Concurrent writes share one `Tso` request ([`PdClient::shared_timestamp`] batches its
//! callers). A write carries its request's whole range ([`StampRange`]) to the store task,
//! which hands the stamps out in the order it proposes the writes ([`StampRange::take`]): the
//! callers' tasks reach the store in any order, and a region's stamps must rise along its log
//! or apply refuses them.
//! When PD does not answer, a write is not held up: it is stamped from this store's clock, kept
//! above every stamp the store used (`floor`), and the store asks PD again a moment later. Such
//! a stamp still orders the region's writes (apply refuses a stamp at or below the region's
//! last revision, and the write is stamped again above it) but orders writes across regions
//! only as well as the stores' clocks agree; the store warns once per outage.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdb_client::pd::SharedTimestamp;
use rdb_client::PdClient;
use slog::{info, warn, Logger};
use tokio::time::Instant;

/// Bits of a PD timestamp below its milliseconds.
const LOGICAL_BITS: u32 = rdb_storage::engine::STAMP_LOGICAL_BITS;

/// How long one write waits for PD's timestamp before it is stamped from the clock.
const PD_WAIT: Duration = Duration::from_millis(500);

/// How long after PD failed to answer writes are stamped from the clock without asking it.
const PD_RETRY: Duration = Duration::from_secs(1);

/// Stamps writes with PD timestamps (see the module docs).
pub struct Stamper {
    pd: PdClient,
    /// Above every stamp this store used or saw.
    floor: AtomicU64,
    /// Since when PD has not answered (None: it answers).
    outage: Mutex<Option<Instant>>,
    logger: Logger,
}

impl Stamper {
    /// A stamper asking `pd` for timestamps.
    pub fn new(pd: PdClient, logger: Logger) -> Stamper {
        Stamper {
            pd,
            floor: AtomicU64::new(0),
            outage: Mutex::new(None),
            logger,
        }
    }

    /// The stamps a write that arrived now may take, above `above` (a region's last revision
    /// that refused an earlier stamp, or 0).
    pub async fn stamp(&self, above: u64) -> StampRange {
        let range = match self.pd_stamp().await {
            Some(t) => StampRange {
                first: t.first.as_u64(),
                last: t.last.as_u64(),
            },
            None => {
                let c = self.clock_stamp();
                StampRange { first: c, last: c }
            }
        };
        let range = range.above(above);
        self.floor.fetch_max(range.last, Ordering::Relaxed);
        range
    }

    /// PD's newest timestamp, or while PD does not answer this store's clock (for the highest
    /// revision a read may ask: one no write has been stamped above yet is refused).
    pub async fn bound(&self) -> u64 {
        match self.pd_stamp().await {
            Some(t) => t.timestamp.as_u64(),
            None => self.clock_stamp(),
        }
    }

    /// PD's timestamp, unless PD failed to answer within the last [`PD_RETRY`].
    async fn pd_stamp(&self) -> Option<SharedTimestamp> {
        let since = *self.outage.lock().unwrap_or_else(|p| p.into_inner());
        if since.is_some_and(|t| t.elapsed() < PD_RETRY) {
            return None;
        }
        match tokio::time::timeout(PD_WAIT, self.pd.shared_timestamp()).await {
            Ok(Ok(ts)) => {
                let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
                if outage.take().is_some() {
                    info!(
                        self.logger,
                        "PD gives timestamps again: writes are stamped by PD"
                    );
                }
                Some(ts)
            }
            failed => {
                let cause = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {} ms", PD_WAIT.as_millis()),
                };
                let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
                if outage.replace(Instant::now()).is_none() {
                    warn!(self.logger, "PD gives no timestamp: writes are stamped from this store's clock until it does (revisions then order writes across regions only as well as the stores' clocks agree)";
                        "error" => cause);
                }
                None
            }
        }
    }

    /// A stamp from this store's clock, above every stamp it used (each caller its own).
    fn clock_stamp(&self) -> u64 {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let clock = ms << LOGICAL_BITS;
        let taken = self
            .floor
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |floor| {
                Some(clock.max(floor.saturating_add(1)))
            });
        match taken {
            Ok(floor) | Err(floor) => clock.max(floor.saturating_add(1)),
        }
    }
}

/// The stamps a write may take: those its `Tso` request reserved for the writes that shared it
/// (or one clock stamp while PD does not answer). All of them were handed out after the write
/// arrived, so any of them orders it after every write acknowledged before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StampRange {
    /// The lowest stamp the write may take.
    pub first: u64,
    /// The highest stamp the write may take.
    pub last: u64,
}

impl StampRange {
    /// This range raised above `above`, keeping at least one stamp.
    fn above(self, above: u64) -> StampRange {
        let first = self.first.max(above.saturating_add(1));
        StampRange {
            first,
            last: self.last.max(first),
        }
    }

    /// The store task's pick, as it proposes a write: the lowest stamp of the range above
    /// `taken` (the highest stamp the store handed out), which it raises. None when the range
    /// is used up by writes proposed before (the write is stamped again).
    pub fn take(self, taken: &mut u64) -> Option<u64> {
        let stamp = self.first.max(taken.saturating_add(1));
        if stamp > self.last {
            return None;
        }
        *taken = stamp;
        Some(stamp)
    }
}

/// The field number of `Command.stamp` (command.proto).
const STAMP_FIELD: u32 = 13;

/// Sets the `stamp` of an encoded command by appending the field: a protobuf decoder keeps the
/// last value of a field, so the store task stamps a write without decoding it again.
pub fn append_stamp(data: &mut Vec<u8>, stamp: u64) {
    prost::encoding::uint64::encode(STAMP_FIELD, &stamp, data);
}

#[cfg(test)]
mod tests {
    use super::{append_stamp, StampRange};
    use prost::Message as _;
    use rdb_proto::command::{command::Op, Command, Put};

    #[test]
    fn an_appended_stamp_is_the_commands_stamp() {
        let cmd = Command {
            client_id: 7,
            seq: 9,
            op: Some(Op::Put(Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            })),
            stamp: 0,
        };
        let mut data = cmd.encode_to_vec();
        append_stamp(&mut data, 1 << 40 | 3);
        let got = Command::decode(data.as_slice()).expect("decodes");
        assert_eq!(
            got,
            Command {
                stamp: 1 << 40 | 3,
                ..cmd
            }
        );
    }

    #[test]
    fn stamps_rise_in_the_order_writes_are_taken_whatever_order_their_callers_ran() {
        // Two requests of three: their writes reach the store task interleaved.
        let a = StampRange {
            first: 10,
            last: 12,
        };
        let b = StampRange {
            first: 13,
            last: 15,
        };
        let mut taken = 0;
        let got: Vec<_> = [a, a, b, a, b, b]
            .iter()
            .map(|r| r.take(&mut taken))
            .collect();
        assert_eq!(
            got,
            [Some(10), Some(11), Some(13), None, Some(14), Some(15)],
            "the third of the first request comes after the second began: stamped again"
        );
        assert_eq!(taken, 15);
    }

    #[test]
    fn a_range_raised_above_a_refusing_revision_keeps_one_stamp() {
        let r = StampRange {
            first: 10,
            last: 12,
        };
        assert_eq!(r.above(0), r);
        assert_eq!(
            r.above(10),
            StampRange {
                first: 11,
                last: 12
            }
        );
        assert_eq!(
            r.above(20),
            StampRange {
                first: 21,
                last: 21
            }
        );
    }
}
