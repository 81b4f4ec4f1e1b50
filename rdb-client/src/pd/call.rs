//! How one request reaches the PD leader: the cluster-id stamp on every request, and the
//! loop that follows leader hints, retries with backoff and gives up at the deadline.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdb_proto::pd as pb;
use rdb_proto::pd::pd_client::PdClient as PdGrpcClient;
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::PdClient;
use crate::attempts::{Attempts, Waited};
use crate::error::human_duration;
use crate::error::{is_connect_failure, is_refused_input};
use crate::{channel_lazy, Error, Options, Result};

/// Stamps every request with the expected cluster id, once one is set (0: none).
#[derive(Clone, Default)]
pub(super) struct Stamp(pub(super) Arc<AtomicU64>);

impl tonic::service::Interceptor for Stamp {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        let id = self.0.load(Ordering::Relaxed);
        if id != 0 {
            req.metadata_mut()
                .insert(pb::CLUSTER_ID_METADATA, id.into());
        }
        Ok(req)
    }
}

/// The generated client over a lazy channel, stamping requests.
pub(super) type PdGrpc = PdGrpcClient<InterceptedService<Channel, Stamp>>;

/// What one attempt learned.
enum Next {
    /// Go to this address at once (a leader hint).
    Redirect(String),
    /// Not the leader and no hint: try the next endpoint.
    Elsewhere,
    /// Try another node after a pause.
    Backoff,
}

impl PdClient {
    /// The deadline of a call starting now.
    pub(super) fn deadline(&self) -> Instant {
        Instant::now() + self.inner.opts.deadline
    }

    /// Runs `f` against the PD leader until it answers, the options' deadline passes, or the
    /// error is final. `write` marks calls whose effect may happen even when no answer arrives:
    /// at the deadline their outcome is [`Error::Indeterminate`] unless no attempt could have
    /// reached a server.
    pub(super) async fn call<T, F, Fut>(&self, write: bool, f: F) -> Result<T>
    where
        F: Fn(PdGrpc) -> Fut,
        Fut: Future<Output = std::result::Result<(T, Option<pb::Error>), tonic::Status>>,
    {
        self.call_until(write, self.deadline(), f).await
    }

    /// [`PdClient::call`] with an explicit deadline.
    pub(super) async fn call_until<T, F, Fut>(
        &self,
        write: bool,
        deadline: Instant,
        f: F,
    ) -> Result<T>
    where
        F: Fn(PdGrpc) -> Fut,
        Fut: Future<Output = std::result::Result<(T, Option<pb::Error>), tonic::Status>>,
    {
        let opts = &self.inner.opts;
        let mut backoff = opts.backoff_min;
        let mut maybe_applied = false;
        let mut last_err = Error::Unavailable("no PD node answered".into());
        let mut target = self.pick_target();
        let mut redirects = 0;
        // NOT_LEADER answers without a hint since the last pause.
        let mut unhinted = 0;
        // Whether any attempt has ended yet (so `last_err` says something).
        let mut answered = false;
        // Attempts past their turn that run on ([`crate::attempts`]), and the nodes passed over
        // since the last pause because one of them runs there.
        let mut attempts = Attempts::new(opts, no_error::<T>);
        let mut passed = 0;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(at_deadline(last_err, write && maybe_applied, opts.deadline));
            }
            let busy = attempts.is_running(&target);
            if busy && passed < self.endpoint_count() {
                // Still waiting for that node: ask another one meanwhile.
                passed += 1;
                target = self.rotate();
                continue;
            }
            let attempt = if busy {
                // Every node was passed over: wait for the attempts still running.
                Err(NoAnswer::Busy)
            } else {
                let client = self.client_for(&target)?;
                match attempts
                    .wait(target.clone(), target.clone(), f(client), deadline)
                    .await
                {
                    Waited::Answered(t, answer) | Waited::Earlier(t, answer) => {
                        target = t;
                        Ok(answer)
                    }
                    Waited::TurnOver => Err(NoAnswer::TurnOver),
                }
            };
            let next = match attempt {
                Ok(Ok((value, None))) => {
                    self.inner.endpoints.set_leader(Some(target));
                    return Ok(value);
                }
                Ok(Ok((_, Some(e)))) => match pb::ErrorCode::try_from(e.code) {
                    Ok(pb::ErrorCode::InvalidArgument) => {
                        return Err(Error::InvalidArgument(e.message))
                    }
                    Ok(pb::ErrorCode::StaleEpoch) => return Err(Error::StaleEpoch(e.message)),
                    Ok(pb::ErrorCode::AlreadyBootstrapped) => {
                        return Err(Error::AlreadyBootstrapped(e.message))
                    }
                    Ok(pb::ErrorCode::NotFound) => return Err(Error::NotFound(e.message)),
                    Ok(pb::ErrorCode::FailedPrecondition) => {
                        return Err(Error::FailedPrecondition(e.message))
                    }
                    Ok(pb::ErrorCode::ClusterMismatch) => {
                        return Err(Error::ClusterMismatch(format!(
                            "PD at {target}: {}",
                            e.message
                        )))
                    }
                    Ok(pb::ErrorCode::NotLeader) => {
                        let hint = e.leader.filter(|m| !m.client_addr.is_empty());
                        last_err = Error::NotLeader {
                            leader_id: hint.as_ref().map(|h| h.id),
                            leader_addr: hint.as_ref().map(|h| h.client_addr.clone()),
                        };
                        match hint {
                            Some(h) if h.client_addr != target && redirects < 3 => {
                                Next::Redirect(h.client_addr)
                            }
                            _ => Next::Elsewhere,
                        }
                    }
                    Ok(pb::ErrorCode::Indeterminate) => {
                        // Safe to retry for every PD call (pd.proto).
                        maybe_applied = true;
                        last_err = Error::Indeterminate(format!("{target}: {}", e.message));
                        Next::Backoff
                    }
                    _ => {
                        last_err = Error::Unavailable(format!("{target}: {}", e.message));
                        Next::Backoff
                    }
                },
                Ok(Err(status)) if is_refused_input(&status) => {
                    return Err(Error::InvalidArgument(status.message().to_string()));
                }
                Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                    return Err(crate::error::unimplemented(
                        &target,
                        crate::error::PD_API,
                        &status,
                    ));
                }
                Ok(Err(status)) => {
                    if !is_connect_failure(&status) {
                        maybe_applied = true;
                    }
                    last_err = Error::Unavailable(format!("{target}: {}", status.message()));
                    Next::Backoff
                }
                Err(NoAnswer::TurnOver) => {
                    maybe_applied = true;
                    // An attempt the deadline cut short says less than the answer before it.
                    if !answered || Instant::now() < deadline {
                        last_err = Error::Unavailable(format!("{target}: attempt timed out"));
                    }
                    Next::Backoff
                }
                Err(NoAnswer::Busy) => Next::Backoff,
            };
            answered = true;
            self.inner.endpoints.set_leader(None);
            match next {
                Next::Redirect(addr) => {
                    redirects += 1;
                    target = addr;
                }
                Next::Elsewhere if unhinted + 1 < self.endpoint_count() => {
                    unhinted += 1;
                    target = self.rotate();
                }
                Next::Elsewhere | Next::Backoff => {
                    redirects = 0;
                    unhinted = 0;
                    passed = 0;
                    let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
                    // An attempt still running may answer meanwhile.
                    if let Some((t, Ok((value, None)))) =
                        attempts.pause_until(Instant::now() + pause).await
                    {
                        self.inner.endpoints.set_leader(Some(t));
                        return Ok(value);
                    }
                    backoff = (backoff * 2).min(opts.backoff_max);
                    target = self.rotate();
                }
            }
        }
    }

    fn pick_target(&self) -> String {
        self.inner.endpoints.pick_target()
    }

    fn rotate(&self) -> String {
        self.inner.endpoints.rotate()
    }

    fn endpoint_count(&self) -> usize {
        self.inner.endpoints.len()
    }

    pub(super) fn client_for(&self, endpoint: &str) -> Result<PdGrpc> {
        let opts = &self.inner.opts;
        self.inner
            .endpoints
            .client_for(endpoint, |a| connect(a, opts, &self.inner.stamp))
    }
}

/// Why an attempt gave no answer.
enum NoAnswer {
    /// Its turn passed; it runs on.
    TurnOver,
    /// Not sent: an earlier attempt at the same node still runs.
    Busy,
}

/// Whether an answer ends a call: no error in it.
fn no_error<T>(answer: &std::result::Result<(T, Option<pb::Error>), tonic::Status>) -> bool {
    matches!(answer, Ok((_, None)))
}

/// The error of a call whose deadline passed; it says so.
fn at_deadline(last: Error, maybe_applied: bool, budget: Duration) -> Error {
    match last {
        _ if maybe_applied => Error::Indeterminate(format!(
            "outcome unknown at the deadline ({}); last error: {last}",
            human_duration(budget)
        )),
        // The PD group kept redirecting: the typed hint is the most useful answer.
        Error::NotLeader { .. } => last,
        Error::Unavailable(m) => Error::Unavailable(format!(
            "no PD leader answered within the deadline ({}); last error: {m}",
            human_duration(budget)
        )),
        other => Error::Unavailable(format!(
            "no PD leader answered within the deadline ({}); last error: {other}",
            human_duration(budget)
        )),
    }
}

/// A client of the PD node at `addr` over a lazy channel, stamping its requests.
pub(super) fn connect(addr: &str, opts: &Options, stamp: &Stamp) -> Result<PdGrpc> {
    Ok(PdGrpcClient::with_interceptor(
        channel_lazy(addr, opts)?,
        stamp.clone(),
    ))
}
