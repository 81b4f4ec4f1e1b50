//! The timestamp oracle: hands out timestamps from a window persisted ahead through Raft.
//!
//! Invariant: every timestamp any leader hands out is below the replicated `tso_limit`, and a
//! leader serves only from a window that an advance *in its own term* opened at or above every
//! earlier limit. So a new leader (or a restarted one) starts above anything served before, and
//! a clock that steps back changes nothing: the physical part never goes down.
//!
//! Requests queue to one task. It takes every request waiting, confirms leadership once for the
//! batch with a ReadIndex round (a deposed leader cannot confirm, so it cannot hand out a
//! timestamp lower than one a newer leader already gave), then serves them in order.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use rdb_proto::pd::{pd_command::Op, PdCommand, TsoAdvance};
use rdb_server::router::{Mailbox, RequestError};
use tokio::sync::{mpsc, oneshot};

use crate::raft_calls::{propose, read_barrier};
use crate::state::PdOutput;

/// Largest logical part plus one: 16 bits.
pub const LOGICAL_SPAN: u64 = 1 << 16;
/// Most requests served by one leadership check.
const MAX_BATCH: usize = 4096;

/// The answer to one request: the first (physical, logical) of `count` consecutive timestamps.
pub type TsoResult = Result<(u64, u64), RequestError>;

struct Call {
    count: u32,
    tx: oneshot::Sender<TsoResult>,
}

/// A handle to the oracle task.
#[derive(Clone)]
pub struct Tso {
    calls: mpsc::Sender<Call>,
}

impl Tso {
    /// Starts the oracle over the PD node's mailbox, persisting windows of `window_ms`.
    pub fn start(mailbox: Mailbox<PdOutput>, window_ms: u64) -> Tso {
        let (tx, rx) = mpsc::channel(64 * 1024);
        tokio::spawn(run(mailbox, window_ms.max(10), rx));
        Tso { calls: tx }
    }

    /// `count` consecutive timestamps (1 to 65536), strictly above any handed out before this
    /// call began.
    pub async fn get(&self, count: u32) -> TsoResult {
        if count == 0 || u64::from(count) > LOGICAL_SPAN {
            return Err(RequestError::InvalidArgument(format!(
                "count must be 1 to {LOGICAL_SPAN}, got {count}"
            )));
        }
        let (tx, rx) = oneshot::channel();
        self.calls
            .send(Call { count, tx })
            .await
            .map_err(|_| RequestError::Unavailable("the oracle stopped".into()))?;
        rx.await
            .map_err(|_| RequestError::Unavailable("the oracle stopped".into()))?
    }
}

/// The serving window of the current leader.
#[derive(Debug, Default)]
struct Window {
    /// The term the window was opened in; 0: none.
    term: u64,
    physical: u64,
    logical: u64,
    limit: u64,
}

/// The wall clock in ms, shifted by `RDB_PD_CLOCK_SKEW_MS` (signed) when that is set: tests use
/// it to restart a node with a clock stepped back.
fn now_ms() -> u64 {
    static SKEW: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let skew = *SKEW.get_or_init(|| {
        std::env::var("RDB_PD_CLOCK_SKEW_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    now.saturating_add(skew).max(0) as u64
}

async fn run(mailbox: Mailbox<PdOutput>, window_ms: u64, mut rx: mpsc::Receiver<Call>) {
    let mut w = Window::default();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        if let Err(e) = serve(&mailbox, window_ms, &mut w, &mut batch).await {
            for c in batch {
                let _ = c.tx.send(Err(e.clone()));
            }
        }
    }
}

async fn serve(
    mailbox: &Mailbox<PdOutput>,
    window_ms: u64,
    w: &mut Window,
    batch: &mut Vec<Call>,
) -> Result<(), RequestError> {
    let term = read_barrier(mailbox).await?;
    if w.term != term {
        // A new term (or a first call): open a window above everything served before.
        *w = Window::default();
        advance(mailbox, window_ms, term, w).await?;
    }
    for c in batch.drain(..) {
        let count = u64::from(c.count);
        loop {
            let now = now_ms();
            if now > w.physical {
                w.physical = now;
                w.logical = 0;
            }
            if w.logical + count > LOGICAL_SPAN {
                // The millisecond is used up: wait for the next one.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            // Keep half a window ahead, so a leader rarely waits on Raft mid-batch.
            if w.physical + window_ms / 2 >= w.limit {
                advance(mailbox, window_ms, term, w).await?;
                if w.physical >= w.limit {
                    continue;
                }
            }
            break;
        }
        let _ = c.tx.send(Ok((w.physical, w.logical)));
        w.logical += count;
    }
    Ok(())
}

/// Persists a window through Raft; only an advance applied in `term` may be served from.
async fn advance(
    mailbox: &Mailbox<PdOutput>,
    window_ms: u64,
    term: u64,
    w: &mut Window,
) -> Result<(), RequestError> {
    let cmd = PdCommand {
        op: Some(Op::TsoAdvance(TsoAdvance {
            now_ms: now_ms(),
            window_ms,
        })),
    };
    let out = propose(mailbox, cmd.encode_to_vec()).await?;
    match out {
        PdOutput::TsoAdvanced {
            base,
            limit,
            term: t,
        } if t == term => {
            if w.term != term {
                w.term = term;
                w.physical = base;
                w.logical = 0;
            }
            w.limit = w.limit.max(limit);
            Ok(())
        }
        PdOutput::TsoAdvanced { .. } => {
            *w = Window::default();
            Err(RequestError::Unavailable(
                "leadership changed while opening a timestamp window".into(),
            ))
        }
        other => Err(RequestError::Unavailable(format!(
            "unexpected answer to a window advance: {other:?}"
        ))),
    }
}
