//! The retry loop shared by every call: pick a node, follow hints, back off, respect the deadline.

use std::future::Future;

use rdb_proto::kv::kv_client::KvClient;
use rdb_proto::kv::{Error as PbError, ErrorCode};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::{Client, Error, ReadConsistency, Result};

/// What one attempt learned.
enum Next {
    /// Go to this address at once (a leader hint).
    Redirect(String),
    /// Try another node after a pause.
    Backoff,
}

impl Client {
    /// Reads: linearizable ones go to the leader like writes; serializable ones go anywhere.
    /// `deadline` bounds every attempt and pause (several pages of one scan share one).
    pub(crate) async fn call_read<T, F, Fut>(
        &self,
        c: ReadConsistency,
        deadline: Instant,
        f: F,
    ) -> Result<T>
    where
        F: Fn(KvClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<(T, Option<PbError>), tonic::Status>>,
    {
        match c {
            ReadConsistency::Linearizable if self.inner.opts.spread_reads => {
                self.call_until_from(false, deadline, true, f).await
            }
            ReadConsistency::Linearizable => self.call_until(false, deadline, f).await,
            ReadConsistency::Serializable => self.call_any(deadline, f).await,
        }
    }

    /// Runs `f` against the leader until it answers, the options' deadline passes, or the error
    /// is final. `write` marks calls whose effect may happen even when no answer arrives.
    pub(crate) async fn call<T, F, Fut>(&self, write: bool, f: F) -> Result<T>
    where
        F: Fn(KvClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<(T, Option<PbError>), tonic::Status>>,
    {
        self.call_until(write, self.deadline(), f).await
    }

    /// The deadline of a call starting now.
    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.inner.opts.deadline
    }

    /// [`Client::call`] with an explicit deadline.
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
        self.call_until_from(write, deadline, false, f).await
    }

    /// [`Client::call_until`]; with `any_node`, the call starts at the next endpoint in
    /// rotation instead of the leader (linearizable reads: every node serves them, asking the
    /// leader for a read index), and an answer does not make that node the known leader.
    async fn call_until_from<T, F, Fut>(
        &self,
        write: bool,
        deadline: Instant,
        any_node: bool,
        f: F,
    ) -> Result<T>
    where
        F: Fn(KvClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<(T, Option<PbError>), tonic::Status>>,
    {
        let opts = &self.inner.opts;
        let mut backoff = opts.backoff_min;
        let mut maybe_applied = false;
        let mut last_err = Error::Unavailable("no node answered".into());
        let mut target = if any_node {
            self.rotate()
        } else {
            self.pick_target()
        };
        let mut redirects = 0;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(if write && maybe_applied {
                    Error::Indeterminate(format!(
                        "outcome unknown at the deadline; last error: {last_err}"
                    ))
                } else {
                    last_err
                });
            }
            let client = self.client_for(&target)?;
            let attempt =
                tokio::time::timeout(opts.attempt_timeout.min(deadline - now), f(client)).await;
            let next = match attempt {
                Ok(Ok((value, None))) => {
                    if !any_node {
                        self.inner.endpoints.set_leader(Some(target));
                    }
                    return Ok(value);
                }
                Ok(Ok((_, Some(e)))) => match ErrorCode::try_from(e.code) {
                    Ok(ErrorCode::InvalidArgument) => {
                        return Err(Error::InvalidArgument(e.message))
                    }
                    Ok(ErrorCode::NotLeader) => {
                        let hint = e.leader.filter(|h| !h.addr.is_empty());
                        last_err = Error::NotLeader {
                            leader_id: hint.as_ref().map(|h| h.id),
                            leader_addr: hint.as_ref().map(|h| h.addr.clone()),
                        };
                        match hint {
                            Some(h) if h.addr != target && redirects < 3 => Next::Redirect(h.addr),
                            _ => Next::Backoff,
                        }
                    }
                    Ok(ErrorCode::Indeterminate) => {
                        // Retrying with the same request id is safe: the cluster applies it once.
                        maybe_applied = true;
                        last_err = Error::Indeterminate(e.message);
                        Next::Backoff
                    }
                    _ => {
                        last_err = Error::Unavailable(e.message);
                        Next::Backoff
                    }
                },
                Ok(Err(status)) if is_refused_input(&status) => {
                    // The server's decoder refused the request before it reached Raft.
                    return Err(Error::InvalidArgument(status.message().to_string()));
                }
                Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                    return Err(Error::Unsupported(format!(
                        "{target}: {}",
                        status.message()
                    )));
                }
                Ok(Err(status)) => {
                    if write && !is_connect_failure(&status) {
                        maybe_applied = true;
                    }
                    last_err = Error::Unavailable(format!("{target}: {}", status.message()));
                    Next::Backoff
                }
                Err(_) => {
                    if write {
                        maybe_applied = true;
                    }
                    last_err = Error::Unavailable(format!("{target}: attempt timed out"));
                    Next::Backoff
                }
            };
            match next {
                Next::Redirect(addr) => {
                    redirects += 1;
                    target = addr;
                }
                Next::Backoff => {
                    redirects = 0;
                    self.inner.endpoints.set_leader(None);
                    let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
                    tokio::time::sleep(pause).await;
                    backoff = (backoff * 2).min(opts.backoff_max);
                    target = self.rotate();
                }
            }
        }
    }

    /// Serializable reads: any node will do; move on when one fails.
    async fn call_any<T, F, Fut>(&self, deadline: Instant, f: F) -> Result<T>
    where
        F: Fn(KvClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<(T, Option<PbError>), tonic::Status>>,
    {
        let opts = &self.inner.opts;
        let mut backoff = opts.backoff_min;
        let mut target = self.pick_target();
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Unavailable(
                    "no node answered before the deadline".into(),
                ));
            }
            let client = self.client_for(&target)?;
            let last_err =
                match tokio::time::timeout(opts.attempt_timeout.min(deadline - now), f(client))
                    .await
                {
                    Ok(Ok((v, None))) => return Ok(v),
                    Ok(Ok((_, Some(e)))) if e.code == ErrorCode::InvalidArgument as i32 => {
                        return Err(Error::InvalidArgument(e.message))
                    }
                    Ok(Ok((_, Some(e)))) => Error::Unavailable(e.message),
                    Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
                        return Err(Error::Unsupported(format!("{target}: {}", s.message())))
                    }
                    Ok(Err(s)) => Error::Unavailable(format!("{target}: {}", s.message())),
                    Err(_) => Error::Unavailable(format!("{target}: attempt timed out")),
                };
            if Instant::now() + backoff >= deadline {
                return Err(last_err);
            }
            tokio::time::sleep(backoff).await;
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

/// True for statuses that mean the server refused the request itself (too large, malformed):
/// retrying cannot help, and nothing was applied.
pub(crate) fn is_refused_input(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::OutOfRange | tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted
    )
}

/// True when the request certainly never reached the server: no connection could be made.
///
/// Decided by the error's type, never its text. tonic 0.14 wraps every failure of its
/// connector (TCP connect refused or timed out, TLS handshake) in [`tonic::ConnectError`] and
/// turns it into an `Unavailable` status whose `source()` is the original transport error; the
/// chain below it ends in the `std::io::Error` of the failed `connect(2)`. A failure on a
/// connection that was already up (reset, h2 error) may have carried the request, so it is not
/// a connect failure.
pub(crate) fn is_connect_failure(status: &tonic::Status) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = next {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        next = err.source();
    }
    false
}
