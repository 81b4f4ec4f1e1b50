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
//!
//! The physical part follows the wall clock when the clock is ahead, and is never held back by
//! it: when a millisecond's 65,536 logical values are used up, the next request is served from
//! the next millisecond at once (as TiKV's PD does), even if the clock is far behind (a window
//! opened above an earlier leader's, or a clock stepped back). The persisted limit bounds how far
//! that goes; the window is advanced through Raft when the physical part nears it.
//!
//! A persisted limit implausibly far ahead of the leader's clock (more than
//! [`MAX_LIMIT_AHEAD_MS`]: left by a window without bound from before `tso_window_ms` had one,
//! or by a clock once set far ahead) is refused, not served from: timestamps up to it may have
//! been handed out, so none below it may be, and serving from it would hand out timestamps
//! from the far future. The oracle answers FAILED_PRECONDITION with the cause and what to do
//! until the clock is within [`MAX_LIMIT_AHEAD_MS`] of the limit.

use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message as _;
use rdb_proto::pd::{pd_command::Op, PdCommand, TsoAdvance};
use rdb_server::router::{Mailbox, RequestError};
use tokio::sync::{mpsc, oneshot};

use crate::raft_calls::{propose, read_barrier};
use crate::state::{PdOutput, PdState};

/// Largest logical part plus one: 16 bits.
pub const LOGICAL_SPAN: u64 = 1 << 16;
/// Most requests served by one leadership check.
const MAX_BATCH: usize = 4096;
/// How far the persisted limit may be ahead of a new leader's clock before the oracle refuses
/// to serve from it (1 hour): far beyond a window (at most a minute) or a clock stepped back by
/// NTP, short of a clock wrong by a time zone or a limit of another year.
pub const MAX_LIMIT_AHEAD_MS: u64 = 3_600_000;

/// Why the oracle gave no timestamps.
#[derive(Debug, Clone, PartialEq)]
pub enum TsoError {
    /// Not the leader, no quorum, a bad count: as for any PD request.
    Request(RequestError),
    /// The persisted limit is implausibly far ahead of this node's clock (the message says
    /// why nothing is served and what to do).
    LimitAhead(String),
}

impl From<RequestError> for TsoError {
    fn from(e: RequestError) -> Self {
        TsoError::Request(e)
    }
}

/// The answer to one request: the first (physical, logical) of `count` consecutive timestamps.
pub type TsoResult = Result<(u64, u64), TsoError>;

/// Why a persisted `limit` (physical ms) cannot be served from at wall-clock time `now`, if it
/// is more than [`MAX_LIMIT_AHEAD_MS`] ahead: the cause and the way out, in one line.
pub fn implausible_limit(limit: u64, now: u64) -> Option<String> {
    let ahead = limit.checked_sub(now).filter(|&a| a > MAX_LIMIT_AHEAD_MS)?;
    let hours = ahead / 3_600_000;
    let far = if hours >= 48 {
        format!("{} days", hours / 24)
    } else {
        format!("{hours} hours")
    };
    Some(format!(
        "PD's persisted timestamp limit (physical {limit} ms) is {far} ahead of this PD \
         node's clock ({now} ms): timestamps up to it may have been handed out, so none below \
         it can be, and serving from it would hand out timestamps from the far future. If this \
         node's clock is behind, correct it (or let a PD node with a correct clock lead); a \
         limit left by a tso_window_ms without bound or a clock once set ahead is served from \
         again once the clock is within 1 hour of it"
    ))
}

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
    /// Starts the oracle over the PD node's mailbox and applied state, persisting windows of
    /// `window_ms`.
    pub fn start(mailbox: Mailbox<PdOutput>, state: Arc<RwLock<PdState>>, window_ms: u64) -> Tso {
        let (tx, rx) = mpsc::channel(64 * 1024);
        tokio::spawn(run(mailbox, state, window_ms.max(10), rx));
        Tso { calls: tx }
    }

    /// `count` consecutive timestamps (1 to 65536), strictly above any handed out before this
    /// call began.
    pub async fn get(&self, count: u32) -> TsoResult {
        if count == 0 || u64::from(count) > LOGICAL_SPAN {
            return Err(TsoError::Request(RequestError::InvalidArgument(format!(
                "count must be 1 to {LOGICAL_SPAN}, got {count}"
            ))));
        }
        let stopped = || TsoError::Request(RequestError::Unavailable("the oracle stopped".into()));
        let (tx, rx) = oneshot::channel();
        self.calls
            .send(Call { count, tx })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
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

/// What the window can do for one request.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    /// Served: the first (physical, logical) of the request's timestamps.
    Served(u64, u64),
    /// The window must be advanced (through Raft) first.
    Advance,
}

impl Window {
    /// Places `count` timestamps (at most [`LOGICAL_SPAN`]) at wall-clock time `now`: in the
    /// current millisecond if they fit, else in the next one (never waiting for the clock),
    /// and asks for an advance while the physical part is within half a window of the limit,
    /// so a leader rarely waits on Raft mid-batch and never serves at or past the limit.
    fn place(&mut self, now: u64, count: u64, window_ms: u64) -> Place {
        if now > self.physical {
            self.physical = now;
            self.logical = 0;
        }
        if self.logical + count > LOGICAL_SPAN {
            self.physical += 1;
            self.logical = 0;
        }
        if self.physical + window_ms / 2 >= self.limit {
            return Place::Advance;
        }
        let first = (self.physical, self.logical);
        self.logical += count;
        Place::Served(first.0, first.1)
    }
}

/// The wall clock in ms, shifted by `RDB_PD_CLOCK_SKEW_MS` (signed) when that is set: tests use
/// it to restart a node with a clock stepped back.
pub(crate) fn now_ms() -> u64 {
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

async fn run(
    mailbox: Mailbox<PdOutput>,
    state: Arc<RwLock<PdState>>,
    window_ms: u64,
    mut rx: mpsc::Receiver<Call>,
) {
    let mut w = Window::default();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        if let Err(e) = serve(&mailbox, &state, window_ms, &mut w, &mut batch).await {
            for c in batch {
                let _ = c.tx.send(Err(e.clone()));
            }
        }
    }
}

async fn serve(
    mailbox: &Mailbox<PdOutput>,
    state: &RwLock<PdState>,
    window_ms: u64,
    w: &mut Window,
    batch: &mut Vec<Call>,
) -> Result<(), TsoError> {
    let term = read_barrier(mailbox).await?;
    if w.term != term {
        // A new term (or a first call): open a window above everything served before, unless
        // that is implausibly far ahead (checked before proposing, so refusals never move the
        // limit on).
        *w = Window::default();
        let limit = state.read().unwrap_or_else(|p| p.into_inner()).tso_limit;
        if let Some(why) = implausible_limit(limit, now_ms()) {
            return Err(TsoError::LimitAhead(why));
        }
        advance(mailbox, window_ms, term, w).await?;
    }
    for c in batch.drain(..) {
        let (physical, logical) = loop {
            match w.place(now_ms(), u64::from(c.count), window_ms) {
                Place::Served(p, l) => break (p, l),
                Place::Advance => advance(mailbox, window_ms, term, w).await?,
            }
        };
        let _ = c.tx.send(Ok((physical, logical)));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A window opened a minute ahead of the wall clock (an earlier leader's limit, or a clock
    /// stepped back), with a limit far enough not to need an advance.
    fn ahead() -> (Window, u64) {
        let now = 1_000_000;
        let w = Window {
            term: 1,
            physical: now + 60_000,
            logical: 0,
            limit: now + 200_000,
        };
        (w, now)
    }

    #[test]
    fn a_used_up_millisecond_moves_to_the_next_one_without_waiting_for_the_clock() {
        let (mut w, now) = ahead();
        let start = w.physical;
        let mut last = None;
        // 200,000 timestamps in requests of various sizes, the clock standing still far behind.
        let mut left = 200_000u64;
        for count in [1u64, 65_536, 7, 65_536, 30_000, 65_535, 2].iter().cycle() {
            if left == 0 {
                break;
            }
            let count = (*count).min(left);
            left -= count;
            let Place::Served(p, l) = w.place(now, count, 3000) else {
                panic!("asked for an advance with the limit far ahead");
            };
            assert!(
                l + count <= LOGICAL_SPAN,
                "{count} from {l} pass the millisecond"
            );
            let first = p << 16 | l;
            if let Some(prev) = last {
                assert!(first > prev, "{first} after {prev}");
            }
            last = Some(first + count - 1);
        }
        assert!(
            w.physical <= start + 10,
            "physical ran on: {}",
            w.physical - start
        );
    }

    #[test]
    fn the_physical_part_follows_a_clock_that_is_ahead() {
        let (mut w, _) = ahead();
        let later = w.physical + 10;
        assert_eq!(w.place(later, 5, 3000), Place::Served(later, 0));
        assert_eq!(w.place(later, 5, 3000), Place::Served(later, 5));
    }

    #[test]
    fn a_limit_more_than_an_hour_ahead_of_the_clock_is_refused_with_the_way_out() {
        let now = 1_796_000_000_000;
        assert_eq!(implausible_limit(now - 5, now), None);
        assert_eq!(implausible_limit(now + MAX_LIMIT_AHEAD_MS, now), None);
        let m = implausible_limit(now + MAX_LIMIT_AHEAD_MS + 1, now).expect("refused");
        assert!(m.contains("is 1 hours ahead"), "{m}");
        // An old window without bound: centuries ahead, past 48 bits of milliseconds.
        let m = implausible_limit(1 << 50, now).expect("refused");
        assert!(m.contains("days ahead") && m.contains("correct it"), "{m}");
        assert!(!m.contains('\n'), "one line: {m}");
    }

    #[test]
    fn near_the_limit_it_asks_for_an_advance_and_never_serves_past_it() {
        let mut w = Window {
            term: 1,
            physical: 10_000,
            logical: 0,
            limit: 11_600,
        };
        assert!(matches!(w.place(0, LOGICAL_SPAN, 3000), Place::Served(..)));
        // Each full request takes the next millisecond; 1,500 below the limit it stops.
        let mut served = 1;
        while let Place::Served(p, _) = w.place(0, LOGICAL_SPAN, 3000) {
            assert!(p + 1500 < w.limit);
            served += 1;
        }
        assert_eq!(served, 100);
        w.limit += 3000;
        assert_eq!(w.place(0, 1, 3000), Place::Served(10_100, 0));
    }
}
