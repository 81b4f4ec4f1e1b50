//! [`PdClient::timestamp`]'s batching: callers queue, one task at a time drains the queue with
//! one `Tso` request per batch (see the parent module's docs).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use rdb_proto::pd as pb;

use super::{PdClient, SharedTimestamp, Timestamp};
use crate::error::human_duration;
use crate::{lock, Error, Result};

/// The most timestamps one TSO request may ask for (pd.proto: 1 to 65536).
pub const MAX_TSO_BATCH: u32 = 1 << Timestamp::LOGICAL_BITS;

/// How long a timestamp waiter waits past its deadline for its batch's own answer.
const TSO_GRACE: Duration = Duration::from_millis(200);

/// A caller waiting for one timestamp, and its deadline.
type TsoWaiter = (Instant, oneshot::Sender<Result<SharedTimestamp>>);

/// Callers waiting for one timestamp each.
#[derive(Default)]
pub(super) struct TsoQueue {
    waiting: VecDeque<TsoWaiter>,
    /// A task is draining the queue.
    driving: bool,
}

/// Clears [`TsoQueue::driving`] when the driving task ends without emptying the queue (its
/// runtime shut down), so a later caller starts another driver.
struct Driving<'a> {
    queue: &'a Mutex<TsoQueue>,
    finished: bool,
}

impl Drop for Driving<'_> {
    fn drop(&mut self) {
        if !self.finished {
            lock(self.queue).driving = false;
        }
    }
}

impl PdClient {
    /// One timestamp, greater than any timestamp PD handed out before this call began.
    ///
    /// Concurrent callers share requests (see the module docs); the call waits at most the
    /// options' deadline.
    pub async fn timestamp(&self) -> Result<Timestamp> {
        self.shared_timestamp().await.map(|t| t.timestamp)
    }

    /// One timestamp as [`Self::timestamp`], with the range of timestamps PD reserved for the
    /// callers that shared its request: a store stamping writes hands these out in the order
    /// the writes are proposed, whichever caller's task happens to run first.
    pub async fn shared_timestamp(&self) -> Result<SharedTimestamp> {
        let deadline = self.deadline();
        let (tx, rx) = oneshot::channel();
        let start_driver = {
            let mut q = lock(&self.inner.tso);
            q.waiting.push_back((deadline, tx));
            !std::mem::replace(&mut q.driving, true)
        };
        if start_driver {
            let me = self.clone();
            tokio::spawn(async move { me.drive_tso().await });
        }
        // The batch's request ends by the earliest deadline in it, with its own error; the grace
        // only guards against a driver that never answers.
        match tokio::time::timeout_at(deadline + TSO_GRACE, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Unavailable(
                "the timestamp batch was dropped without an answer".into(),
            )),
            Err(_) => Err(Error::Unavailable(format!(
                "no timestamp within the deadline ({})",
                human_duration(self.inner.opts.deadline)
            ))),
        }
    }

    /// Serves the timestamp queue until it is empty: one request per batch of waiting callers.
    async fn drive_tso(&self) {
        let mut guard = Driving {
            queue: &self.inner.tso,
            finished: false,
        };
        loop {
            let batch: Vec<_> = {
                let mut q = lock(&self.inner.tso);
                // Callers that gave up need no timestamp.
                q.waiting.retain(|(_, tx)| !tx.is_closed());
                if q.waiting.is_empty() {
                    q.driving = false;
                    guard.finished = true;
                    return;
                }
                let n = q.waiting.len().min(MAX_TSO_BATCH as usize);
                q.waiting.drain(..n).collect()
            };
            let deadline = batch
                .iter()
                .map(|(d, _)| *d)
                .min()
                .unwrap_or_else(Instant::now);
            match self.timestamps_until(batch.len() as u32, deadline).await {
                Ok((first, count)) => {
                    let at = |i: u32| Timestamp {
                        physical: first.physical,
                        logical: first.logical + i as u16,
                    };
                    let last = at(count - 1);
                    let mut batch = batch.into_iter();
                    for (i, (_, tx)) in batch.by_ref().take(count as usize).enumerate() {
                        let _ = tx.send(Ok(SharedTimestamp {
                            timestamp: at(i as u32),
                            first,
                            last,
                        }));
                    }
                    // PD gave fewer than asked: the rest wait for the next request.
                    let mut q = lock(&self.inner.tso);
                    for waiter in batch.rev() {
                        q.waiting.push_front(waiter);
                    }
                }
                Err(e) => {
                    for (_, tx) in batch {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// `count` consecutive timestamps (1 to [`MAX_TSO_BATCH`]), in one request: the first, and
    /// how many PD gave (at most `count`). They share `physical`; `logical` counts up.
    pub async fn timestamps(&self, count: u32) -> Result<(Timestamp, u32)> {
        self.timestamps_until(count, self.deadline()).await
    }

    async fn timestamps_until(&self, count: u32, deadline: Instant) -> Result<(Timestamp, u32)> {
        if count == 0 || count > MAX_TSO_BATCH {
            return Err(Error::InvalidArgument(format!(
                "timestamps: count {count} is outside 1..={MAX_TSO_BATCH}"
            )));
        }
        let r = self
            .call_until(false, deadline, move |mut c| async move {
                let r = c.tso(pb::TsoRequest { count }).await?.into_inner();
                Ok(((r.first, r.count), r.error))
            })
            .await?;
        match r {
            (Some(first), n)
                if n >= 1
                    && n <= count
                    && first.logical <= u64::from(MAX_TSO_BATCH - n)
                    && first.physical >> (64 - Timestamp::LOGICAL_BITS) == 0 =>
            {
                Ok((
                    Timestamp {
                        physical: first.physical,
                        logical: first.logical as u16,
                    },
                    n,
                ))
            }
            (first, n) => {
                let first = match first {
                    Some(t) => format!("physical {} logical {}", t.physical, t.logical),
                    None => "none".into(),
                };
                Err(Error::Unavailable(format!(
                    "PD answered {count} timestamps with a malformed range (first {first}, count {n})"
                )))
            }
        }
    }
}
