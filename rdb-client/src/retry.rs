//! The retry loop shared by every call: pick a node, follow hints, back off, respect the deadline.
//!
//! A call's [`Route`] says where its attempts go: the leader of the configured endpoints, or in
//! PD mode the leader of its keys' region ([`crate::routing`]). A region route is looked up in
//! the region cache again before every attempt that follows no hint, so an answer that corrects
//! the cache (`NotLeader`, `EpochNotMatch`, `KeyNotInRegion`, `RegionNotFound`) sends the next
//! attempt elsewhere at once. The rest is common to both: one deadline, backoff, the same
//! request id on every attempt, turns that keep a silent node from taking the deadline
//! ([`crate::attempts`]), and the [`Error::Indeterminate`] rule for writes.

use std::future::Future;

use rdb_proto::kv::kv_client::KvClient;
use rdb_proto::kv::{Error as PbError, ErrorCode, RegionContext};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::attempts::{Attempts, Waited};
use crate::error::{is_connect_failure, is_refused_input};
use crate::pd::Region;
use crate::route::{Outcome, Progress, Route, Target};
use crate::{Client, Error, ReadConsistency, Result};

/// Retries made at once (hints, cache corrections) before the loop pauses anyway.
const MAX_QUICK_RETRIES: u32 = 3;

/// What one attempt learned.
enum Next {
    /// Try again at once: at this target (a leader hint), or (`None`) where the route now says.
    Now(Option<Target>),
    /// Try another node after a pause.
    Backoff,
}

impl Client {
    /// A call for `key`: a write (`write`) or a leader read, to the key's region in PD mode,
    /// else to the leader of the endpoints. `f` gets the region context to put in the request.
    pub(crate) async fn call_key<T, F, Fut>(
        &self,
        write: bool,
        key: &[u8],
        deadline: Instant,
        f: F,
    ) -> Result<T>
    where
        F: Fn(KvClient<Channel>, Option<RegionContext>) -> Fut,
        Fut: Future<Output = std::result::Result<(T, Option<PbError>), tonic::Status>>,
    {
        let routed = self.ns.route_key(key);
        let keys = [routed.as_ref()];
        let route = match self.inner.routing {
            Some(_) => Route::Region {
                keys: &keys,
                any_peer: false,
            },
            None => Route::Group { any_node: false },
        };
        self.run_to_end(write, deadline, route, f).await
    }

    /// A read of `key`: in PD mode from the key's region (its leader first, also for
    /// serializable reads); otherwise linearizable ones go to the leader like writes (or to
    /// every node in turn, with `spread_reads`) and serializable ones anywhere. `deadline`
    /// bounds every attempt and pause (several pages of one scan share one).
    pub(crate) async fn call_read_key<T, F, Fut>(
        &self,
        c: ReadConsistency,
        key: &[u8],
        deadline: Instant,
        f: F,
    ) -> Result<T>
    where
        F: Fn(KvClient<Channel>, Option<RegionContext>) -> Fut,
        Fut: Future<Output = std::result::Result<(T, Option<PbError>), tonic::Status>>,
    {
        let routed = self.ns.route_key(key);
        let keys = [routed.as_ref()];
        let route = match (&self.inner.routing, c) {
            (Some(_), c) => Route::Region {
                keys: &keys,
                any_peer: c == ReadConsistency::Serializable,
            },
            (None, ReadConsistency::Linearizable) => Route::Group {
                any_node: self.inner.opts.spread_reads,
            },
            (None, ReadConsistency::Serializable) => {
                return self.call_any(deadline, |c| f(c, None)).await
            }
        };
        self.run_to_end(false, deadline, route, f).await
    }

    /// The deadline of a call starting now.
    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.inner.opts.deadline
    }

    /// Runs `f` against the leader of the configured endpoints until it answers, `deadline`
    /// passes, or the error is final: for calls about that Raft group (no key), which a PD-mode
    /// client refuses. `write` marks calls whose effect may happen even when no answer arrives.
    pub(crate) async fn call_until<T, F, Fut>(
        &self,
        write: bool,
        deadline: Instant,
        f: F,
    ) -> Result<T>
    where
        F: Fn(KvClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<(T, Option<PbError>), tonic::Status>>,
    {
        let route = Route::Group { any_node: false };
        self.run_to_end(write, deadline, route, |c, _| f(c)).await
    }

    /// Errs in PD mode: the call addresses the one Raft group of the configured endpoints.
    pub(crate) fn require_group(&self) -> Result<()> {
        match self.inner.routing {
            Some(_) => Err(Error::Unsupported(
                "this call addresses the Raft group of the configured endpoints; a PD-mode \
                 client has none (use Client::new with the addresses of one group)"
                    .into(),
            )),
            None => Ok(()),
        }
    }

    /// [`Client::run`] for one key or one group: a cut can never be needed.
    async fn run_to_end<T, F, Fut>(
        &self,
        write: bool,
        deadline: Instant,
        route: Route<'_>,
        f: F,
    ) -> Result<T>
    where
        F: Fn(KvClient<Channel>, Option<RegionContext>) -> Fut,
        Fut: Future<Output = std::result::Result<(T, Option<PbError>), tonic::Status>>,
    {
        let mut progress = Progress::default();
        match self.run(write, deadline, route, &mut progress, f).await? {
            Outcome::Done(v) => Ok(v),
            Outcome::Regroup => Err(Error::Unavailable(
                "the keys of one request lie in several regions".into(),
            )),
        }
    }

    /// The loop: runs `f` (given a client and the region context) where `route` says until it
    /// answers, `deadline` passes, or the error is final. `write` marks calls whose effect may
    /// happen even when no answer arrives; `progress` carries what earlier loops of the same
    /// write learned. An attempt unanswered after its turn runs on while the loop tries other
    /// nodes ([`crate::attempts`]).
    pub(crate) async fn run<T, F, Fut>(
        &self,
        write: bool,
        deadline: Instant,
        route: Route<'_>,
        progress: &mut Progress,
        f: F,
    ) -> Result<Outcome<T>>
    where
        F: Fn(KvClient<Channel>, Option<RegionContext>) -> Fut,
        Fut: Future<Output = std::result::Result<(T, Option<PbError>), tonic::Status>>,
    {
        let opts = &self.inner.opts;
        let mut backoff = opts.backoff_min;
        let mut attempts = Attempts::new(opts, answered::<T>);
        let (any, mut next_target) = match route {
            Route::Group { any_node } => {
                self.require_group()?;
                let addr = if any_node {
                    self.rotate()
                } else {
                    self.pick_target()
                };
                (any_node, Some(Target { addr, region: None }))
            }
            Route::Region { any_peer, .. } => (any_peer, None),
        };
        // Attempts made at once since the last pause; (PD mode) how many peers past the
        // region's leader the next routed attempt starts; nodes passed over since the last
        // pause because an attempt of this call still runs there.
        let mut quick = 0;
        let mut skip = 0;
        let mut passed = 0;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(progress.at_deadline(write));
            }
            let target = match next_target.take() {
                Some(t) => Ok(Some(t)),
                None => self.route(route, skip, deadline).await,
            };
            let (next, region) = match target {
                Ok(Some(t)) if attempts.is_running(&t.addr) && passed < self.candidates(&t) => {
                    // Still waiting for that node: ask another one meanwhile.
                    passed += 1;
                    match route {
                        Route::Group { .. } => {
                            next_target = Some(Target {
                                addr: self.rotate(),
                                region: None,
                            })
                        }
                        Route::Region { .. } => skip += 1,
                    }
                    continue;
                }
                Ok(Some(target)) => {
                    match self
                        .attempt(write, any, deadline, target, progress, &mut attempts, &f)
                        .await
                    {
                        Attempt::Done(value) => return Ok(Outcome::Done(value)),
                        Attempt::Fail(e) => return Err(e),
                        Attempt::Next(next, region) => (next, region),
                    }
                }
                Ok(None) => return Ok(Outcome::Regroup),
                Err(e @ (Error::InvalidArgument(_) | Error::Unsupported(_))) => return Err(e),
                Err(e) => {
                    progress.last_err = e;
                    (Next::Backoff, None)
                }
            };
            match next {
                Next::Now(target) if quick < MAX_QUICK_RETRIES => {
                    // A hint or a corrected cache: start again from the region's leader.
                    quick += 1;
                    skip = 0;
                    next_target = target;
                }
                _ => {
                    quick = 0;
                    passed = 0;
                    match (&self.inner.routing, region) {
                        (Some(routing), Some((id, peers))) => {
                            // Another peer next; after trying them all, ask PD again.
                            skip += 1;
                            if skip % peers.max(1) == 0 {
                                routing.cache.invalidate(id);
                            }
                        }
                        (Some(_), None) => {}
                        (None, _) => self.inner.endpoints.set_leader(None),
                    }
                    let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
                    // An attempt still running may answer meanwhile.
                    if let Some((target, Ok((value, None)))) =
                        attempts.pause_until(Instant::now() + pause).await
                    {
                        self.answered_by(&target, any);
                        return Ok(Outcome::Done(value));
                    }
                    backoff = (backoff * 2).min(opts.backoff_max);
                    next_target = match route {
                        Route::Group { .. } => Some(Target {
                            addr: self.rotate(),
                            region: None,
                        }),
                        Route::Region { .. } => None,
                    };
                }
            }
        }
    }

    /// How many nodes an attempt like `target` can go to: the region's peers, or the endpoints.
    fn candidates(&self, target: &Target) -> usize {
        match &target.region {
            Some((r, _)) => r.region.peers.len(),
            None => self.inner.endpoints.len(),
        }
    }

    /// Records that `target` answered: it leads, unless the call may go to any node.
    fn answered_by(&self, target: &Target, any: bool) {
        match (&target.region, self.inner.routing.as_ref()) {
            (None, _) if !any => self.inner.endpoints.set_leader(Some(target.addr.clone())),
            (Some((r, peer)), Some(routing)) if !any && r.leader != Some(*peer) => {
                routing.cache.update_leader(r.region.id, *peer);
            }
            _ => {}
        }
    }

    /// Where the next attempt of `route` goes; `None` when its keys must be cut again.
    async fn route(
        &self,
        route: Route<'_>,
        skip: usize,
        deadline: Instant,
    ) -> Result<Option<Target>> {
        match (route, &self.inner.routing) {
            (Route::Region { keys, .. }, Some(routing)) => {
                routing.target(keys, skip, deadline).await
            }
            _ => Ok(Some(Target {
                addr: self.rotate(),
                region: None,
            })),
        }
    }

    /// One attempt at `target`, and what it means for the next one. An attempt past its turn
    /// joins `attempts`, and an answer from one of those that comes first is taken instead.
    #[allow(clippy::too_many_arguments)]
    async fn attempt<T, F, Fut>(
        &self,
        write: bool,
        any: bool,
        deadline: Instant,
        target: Target,
        progress: &mut Progress,
        attempts: &mut Attempts<Target, Fut>,
        f: &F,
    ) -> Attempt<T>
    where
        F: Fn(KvClient<Channel>, Option<RegionContext>) -> Fut,
        Fut: Future<Output = std::result::Result<(T, Option<PbError>), tonic::Status>>,
    {
        // Routing may have asked PD: no attempt (that might apply) once the time is up.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Attempt::Fail(progress.at_deadline(write));
        }
        let region = target
            .region
            .as_ref()
            .map(|(r, _)| (r.region.id, r.region.peers.len()));
        if attempts.is_running(&target.addr) {
            // Every other node was passed over too: wait for the attempts still running.
            return Attempt::Next(Next::Backoff, region);
        }
        let client = match self.client_for(&target.addr) {
            Ok(c) => c,
            Err(e) => return Attempt::Fail(e),
        };
        let sent_to = target.addr.clone();
        let store = target.region.as_ref().map(|(_, p)| p.store_id);
        let routing = self.inner.routing.as_ref();
        // PD mode: a store that gave no answer may have moved; look its address up again.
        let store_failed = || {
            if let (Some(routing), Some(store)) = (routing, store) {
                routing.on_store_failure(store);
            }
        };
        let fut = f(client, target.context());
        let (target, answer) = match attempts.wait(sent_to.clone(), target, fut, deadline).await {
            Waited::Answered(target, answer) | Waited::Earlier(target, answer) => (target, answer),
            Waited::TurnOver => {
                store_failed();
                if write {
                    progress.maybe_applied = true;
                }
                progress.last_err = Error::Unavailable(format!("{sent_to}: attempt timed out"));
                return Attempt::Next(Next::Backoff, region);
            }
        };
        let region = target
            .region
            .as_ref()
            .map(|(r, _)| (r.region.id, r.region.peers.len()));
        if let (Ok(_), Some(routing), Some((_, peer))) = (&answer, routing, &target.region) {
            routing.on_store_answer(peer.store_id);
        }
        let addr = &target.addr;
        let next = match answer {
            Ok((value, None)) => {
                self.answered_by(&target, any);
                return Attempt::Done(value);
            }
            Ok((_, Some(e))) => match ErrorCode::try_from(e.code) {
                Ok(
                    code @ (ErrorCode::InvalidArgument
                    | ErrorCode::Compacted
                    | ErrorCode::FutureRevision),
                ) => return Attempt::Fail(refused(code, e.message)),
                Ok(ErrorCode::NotLeader) => {
                    let hint = e.leader.filter(|h| !h.addr.is_empty());
                    progress.last_err = Error::NotLeader {
                        leader_id: hint.as_ref().map(|h| h.id),
                        leader_addr: hint.as_ref().map(|h| h.addr.clone()),
                    };
                    match hint {
                        Some(h) if h.addr != *addr => {
                            // PD mode: the hint names the leader's store and peer; the retry
                            // keeps the region's context (a stale one gets EpochNotMatch).
                            let region = match (target.region, routing) {
                                (Some((r, _)), Some(routing)) => {
                                    Some((r.clone(), routing.on_not_leader(&r, &h)))
                                }
                                _ => None,
                            };
                            Next::Now(Some(Target {
                                addr: h.addr,
                                region,
                            }))
                        }
                        _ => Next::Backoff,
                    }
                }
                Ok(ErrorCode::Indeterminate) => {
                    // Retrying with the same request id is safe: the cluster applies it once.
                    progress.maybe_applied = true;
                    progress.last_err = Error::Indeterminate(e.message);
                    Next::Backoff
                }
                // Nothing was proposed: retrying (with the same request id) is safe.
                Ok(
                    code @ (ErrorCode::EpochNotMatch
                    | ErrorCode::KeyNotInRegion
                    | ErrorCode::RegionNotFound),
                ) => {
                    progress.last_err = Error::Unavailable(format!("{addr}: {}", e.message));
                    match (&target.region, routing) {
                        (Some((r, _)), Some(routing)) => {
                            if code == ErrorCode::EpochNotMatch {
                                let current = e.regions.into_iter().map(Region::from).collect();
                                routing.cache.on_epoch_not_match(&r.region, current);
                            } else {
                                routing.cache.invalidate(r.region.id);
                            }
                            Next::Now(None)
                        }
                        _ => Next::Backoff,
                    }
                }
                _ => {
                    progress.last_err = Error::Unavailable(e.message);
                    Next::Backoff
                }
            },
            Err(status) if is_refused_input(&status) => {
                // The server's decoder refused the request before it reached Raft.
                return Attempt::Fail(Error::InvalidArgument(status.message().to_string()));
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                return Attempt::Fail(crate::error::unimplemented(
                    addr,
                    crate::error::KV_API,
                    &status,
                ));
            }
            Err(status) => {
                store_failed();
                if write && !is_connect_failure(&status) {
                    progress.maybe_applied = true;
                }
                progress.last_err = Error::Unavailable(format!("{addr}: {}", status.message()));
                Next::Backoff
            }
        };
        Attempt::Next(next, region)
    }

    /// Serializable reads: any node will do; move on when one fails or is slow (an attempt past
    /// its turn runs on, and its answer is taken if it comes first).
    async fn call_any<T, F, Fut>(&self, deadline: Instant, f: F) -> Result<T>
    where
        F: Fn(KvClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<(T, Option<PbError>), tonic::Status>>,
    {
        let opts = &self.inner.opts;
        let mut backoff = opts.backoff_min;
        let mut attempts = Attempts::new(opts, answered::<T>);
        let mut target = self.pick_target();
        let mut last_err = Error::Unavailable("no node answered before the deadline".into());
        loop {
            if Instant::now() >= deadline {
                return Err(last_err);
            }
            if !attempts.is_running(&target) {
                let client = self.client_for(&target)?;
                let answer = match attempts.wait(target.clone(), (), f(client), deadline).await {
                    Waited::Answered((), answer) | Waited::Earlier((), answer) => Some(answer),
                    Waited::TurnOver => None,
                };
                last_err = match answer {
                    Some(Ok((v, None))) => return Ok(v),
                    Some(Ok((_, Some(e)))) => match ErrorCode::try_from(e.code) {
                        Ok(
                            code @ (ErrorCode::InvalidArgument
                            | ErrorCode::Compacted
                            | ErrorCode::FutureRevision),
                        ) => return Err(refused(code, e.message)),
                        _ => Error::Unavailable(e.message),
                    },
                    Some(Err(s)) if s.code() == tonic::Code::Unimplemented => {
                        return Err(crate::error::unimplemented(
                            &target,
                            crate::error::KV_API,
                            &s,
                        ))
                    }
                    Some(Err(s)) => Error::Unavailable(format!("{target}: {}", s.message())),
                    None => Error::Unavailable(format!("{target}: attempt timed out")),
                };
            }
            let until = (Instant::now() + backoff).min(deadline);
            if let Some(((), Ok((v, None)))) = attempts.pause_until(until).await {
                return Ok(v);
            }
            backoff = (backoff * 2).min(opts.backoff_max);
            target = self.rotate();
        }
    }

    fn pick_target(&self) -> String {
        self.inner.endpoints.pick_target()
    }

    fn rotate(&self) -> String {
        self.inner.endpoints.rotate()
    }
}

/// Whether an answer ends a call: no error in it.
fn answered<T>(answer: &std::result::Result<(T, Option<PbError>), tonic::Status>) -> bool {
    matches!(answer, Ok((_, None)))
}

/// How one attempt ended.
enum Attempt<T> {
    /// The answer.
    Done(T),
    /// A final error: retrying cannot help.
    Fail(Error),
    /// Try again, as [`Next`] says; PD mode: the id and peer count of the region addressed.
    Next(Next, Option<(u64, usize)>),
}

/// The client error for a request the server refused as asked (retrying cannot help): input
/// over a limit, or a read at a revision outside the history kept.
fn refused(code: ErrorCode, message: String) -> Error {
    match code {
        ErrorCode::Compacted => Error::Compacted(message),
        ErrorCode::FutureRevision => Error::FutureRevision(message),
        _ => Error::InvalidArgument(message),
    }
}
