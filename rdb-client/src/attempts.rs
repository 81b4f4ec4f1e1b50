//! Attempts that outlive their turn: how the retry loops ([`crate::retry`], [`crate::pd`]) wait
//! for one node without letting a silent one take the whole deadline.
//!
//! A client cannot tell a paused or cut-off leader from a slow one: both are silent. So a loop
//! waits for an attempt only its [`turn`] (about an election timeout, see
//! [`Options::election_timeout`]) before it tries another node, with the same request id. It does
//! not drop the attempt, though: the attempt runs on until [`Options::attempt_timeout`] or the
//! deadline, and a success from it ends the call as well as one from a later attempt. So a paused
//! leader costs a call about an election (the time the cluster needs to replace it), and a slow
//! but healthy leader (a large scan) still answers: its attempt is never cut and sent again, which
//! could go on for as long as the node stays slower than the turn.
//!
//! A node with an attempt of the call still running gets no second one from that call: the loops
//! pass it over (also when a `NotLeader` hint names it) and ask the others meanwhile. A write
//! whose attempt outlived its turn may have been applied; the loops record that when the turn
//! ends, whatever the attempt answers later.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use crate::Options;

/// The shortest turn: below it, a busy but healthy node would be passed over on every call.
pub(crate) const MIN_TURN: Duration = Duration::from_millis(200);

/// How long a call waits for one attempt before it also tries another node: the election
/// timeout, at most a third of the deadline (so a call gets several tries), never below
/// [`MIN_TURN`] nor above the attempt timeout.
pub(crate) fn turn(opts: &Options) -> Duration {
    opts.election_timeout
        .min(opts.deadline / 3)
        .max(MIN_TURN)
        .min(opts.attempt_timeout)
}

/// An attempt past its turn, still running.
struct Running<M, Fut> {
    /// The node it went to.
    addr: String,
    /// What the loop needs to know about it when it answers (its target).
    meta: M,
    /// When it is given up.
    until: Instant,
    fut: Pin<Box<Fut>>,
}

/// The attempts of one call that are still running after their turn.
pub(crate) struct Attempts<M, Fut: Future> {
    running: Vec<Running<M, Fut>>,
    turn: Duration,
    limit: Duration,
    /// Which late answers end the call (successes); the others are dropped.
    wanted: fn(&Fut::Output) -> bool,
}

/// How waiting for one attempt ended.
pub(crate) enum Waited<M, O> {
    /// The attempt answered within its turn: its target and answer.
    Answered(M, O),
    /// Its turn is over; it runs on while its time allows.
    TurnOver,
    /// An earlier attempt of the call answered with a wanted answer: its target and answer.
    Earlier(M, O),
}

impl<M, Fut: Future> Attempts<M, Fut> {
    /// No attempt yet; `wanted` says which answers of attempts past their turn end the call.
    pub(crate) fn new(opts: &Options, wanted: fn(&Fut::Output) -> bool) -> Self {
        Attempts {
            running: Vec::new(),
            turn: turn(opts),
            limit: opts.attempt_timeout,
            wanted,
        }
    }

    /// Whether an attempt at `addr` still runs (one whose time ran out no longer does).
    pub(crate) fn is_running(&mut self, addr: &str) -> bool {
        let now = Instant::now();
        self.running.retain(|r| r.until > now);
        self.running.iter().any(|r| r.addr == addr)
    }

    /// Waits for `fut`, an attempt at `addr` described by `meta`, until its turn is over (or
    /// `deadline`), or until an earlier attempt answers.
    pub(crate) async fn wait(
        &mut self,
        addr: String,
        meta: M,
        fut: Fut,
        deadline: Instant,
    ) -> Waited<M, Fut::Output> {
        let start = Instant::now();
        let turn_end = (start + self.turn).min(deadline);
        let until = (start + self.limit).min(deadline);
        let mut fut = Box::pin(fut);
        {
            let earlier = self.earlier();
            tokio::pin!(earlier);
            tokio::select! {
                biased;
                out = &mut fut => return Waited::Answered(meta, out),
                (m, out) = &mut earlier => return Waited::Earlier(m, out),
                _ = tokio::time::sleep_until(turn_end) => {}
            }
        }
        if until > turn_end {
            self.running.push(Running {
                addr,
                meta,
                until,
                fut,
            });
        }
        Waited::TurnOver
    }

    /// Sleeps until `until`; an earlier attempt that answers first ends the pause with its
    /// target and answer.
    pub(crate) async fn pause_until(&mut self, until: Instant) -> Option<(M, Fut::Output)> {
        tokio::select! {
            biased;
            got = self.earlier() => Some(got),
            _ = tokio::time::sleep_until(until) => None,
        }
    }

    /// The first wanted answer of the running attempts; pending while there is none. Answers
    /// not wanted are dropped with their attempt, and so are attempts whose time ran out.
    async fn earlier(&mut self) -> (M, Fut::Output) {
        std::future::poll_fn(|cx| {
            let now = Instant::now();
            let mut i = 0;
            while i < self.running.len() {
                if self.running[i].until <= now {
                    self.running.swap_remove(i);
                    continue;
                }
                match self.running[i].fut.as_mut().poll(cx) {
                    Poll::Ready(out) => {
                        let r = self.running.swap_remove(i);
                        if (self.wanted)(&out) {
                            return Poll::Ready((r.meta, out));
                        }
                    }
                    Poll::Pending => i += 1,
                }
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(deadline: u64, election: u64, attempt: u64) -> Options {
        Options {
            deadline: Duration::from_millis(deadline),
            election_timeout: Duration::from_millis(election),
            attempt_timeout: Duration::from_millis(attempt),
            ..Options::default()
        }
    }

    #[test]
    fn a_turn_is_about_an_election_and_well_inside_the_deadline() {
        let ms = |t: Duration| t.as_millis();
        assert_eq!(ms(turn(&Options::default())), 1000);
        assert_eq!(ms(turn(&opts(3000, 1000, 6000))), 1000);
        assert_eq!(
            ms(turn(&opts(1500, 1000, 6000))),
            500,
            "a third of the deadline"
        );
        assert_eq!(
            ms(turn(&opts(300, 1000, 6000))),
            200,
            "never below the floor"
        );
        assert_eq!(ms(turn(&opts(10_000, 300, 6000))), 300);
        assert_eq!(
            ms(turn(&opts(400, 1000, 100))),
            100,
            "never above an attempt"
        );
    }

    type Boxed = Pin<Box<dyn Future<Output = u32> + Send>>;

    fn after(ms: u64, v: u32) -> Boxed {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            v
        })
    }

    #[tokio::test]
    async fn an_attempt_past_its_turn_still_answers_and_its_node_stays_busy() {
        // Turns of 200 ms, attempts of up to 2 s.
        let mut a: Attempts<&str, Boxed> = Attempts::new(&opts(10_000, 100, 2000), |v| *v > 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        let turn_over = a.wait("a".into(), "slow", after(300, 7), deadline).await;
        assert!(matches!(turn_over, Waited::TurnOver));
        assert!(a.is_running("a") && !a.is_running("b"));
        // An attempt elsewhere that never answers: the first one's answer ends the wait.
        match a
            .wait(
                "b".into(),
                "silent",
                Box::pin(std::future::pending()),
                deadline,
            )
            .await
        {
            Waited::Earlier(m, v) => assert_eq!((m, v), ("slow", 7)),
            _ => panic!("the earlier attempt's answer was not taken"),
        }
        assert!(!a.is_running("a"));
        // An answer within the turn is the attempt's own.
        match a.wait("c".into(), "quick", after(10, 3), deadline).await {
            Waited::Answered(m, v) => assert_eq!((m, v), ("quick", 3)),
            _ => panic!("the attempt's own answer was not taken"),
        }
    }

    #[tokio::test]
    async fn unwanted_late_answers_and_expired_attempts_are_dropped() {
        // Turns of 200 ms, attempts of up to 700 ms.
        let mut a: Attempts<&str, Boxed> = Attempts::new(&opts(10_000, 100, 700), |v| *v > 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        let refusal = a.wait("a".into(), "refusal", after(300, 0), deadline).await;
        assert!(matches!(refusal, Waited::TurnOver));
        let never = a.wait(
            "b".into(),
            "never",
            Box::pin(std::future::pending()),
            deadline,
        );
        assert!(matches!(never.await, Waited::TurnOver));
        // The refusal came meanwhile and is not an answer; "b" runs on until its 700 ms.
        let pause = a
            .pause_until(Instant::now() + Duration::from_millis(100))
            .await;
        assert!(pause.is_none());
        assert!(!a.is_running("a"));
        assert!(a.is_running("b"));
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!a.is_running("b"), "given up after the attempt timeout");
    }
}
