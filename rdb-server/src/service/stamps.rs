//! PD-mode revisions (specs/018-versions): a store stamps every write it leads with a PD
//! timestamp fetched after the write reached it, so revisions order writes across regions: a
//! write acknowledged before another reached its leader has the smaller revision.
//!
//! Concurrent writes share one `Tso` request ([`PdClient::timestamp`] batches its callers).
//! When PD does not answer, a write is not held up: it is stamped from this store's clock, kept
//! above every stamp the store used (`floor`), and the store asks PD again a moment later. Such
//! a stamp still orders the region's writes (apply refuses a stamp at or below the region's
//! last revision, and the write is stamped again above it) but orders writes across regions
//! only as well as the stores' clocks agree; the store warns once per outage.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

    /// A stamp for a write that arrived now, above `above` (a region's last revision that
    /// refused an earlier stamp, or 0).
    pub async fn stamp(&self, above: u64) -> u64 {
        let stamp = match self.pd_stamp().await {
            Some(ts) => ts,
            None => self.clock_stamp(),
        };
        let stamp = stamp.max(above.saturating_add(1));
        self.floor.fetch_max(stamp, Ordering::Relaxed);
        stamp
    }

    /// PD's newest timestamp, or while PD does not answer this store's clock (for the highest
    /// revision a read may ask: one no write has been stamped above yet is refused).
    pub async fn bound(&self) -> u64 {
        match self.pd_stamp().await {
            Some(ts) => ts,
            None => self.clock_stamp(),
        }
    }

    /// PD's timestamp, unless PD failed to answer within the last [`PD_RETRY`].
    async fn pd_stamp(&self) -> Option<u64> {
        let since = *self.outage.lock().unwrap_or_else(|p| p.into_inner());
        if since.is_some_and(|t| t.elapsed() < PD_RETRY) {
            return None;
        }
        match tokio::time::timeout(PD_WAIT, self.pd.timestamp()).await {
            Ok(Ok(ts)) => {
                let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
                if outage.take().is_some() {
                    info!(
                        self.logger,
                        "PD gives timestamps again: writes are stamped by PD"
                    );
                }
                Some(ts.as_u64())
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
