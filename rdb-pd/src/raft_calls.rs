//! The two calls PD makes into its Raft task, with a deadline.

use std::time::Duration;

use rdb_server::router::{Mailbox, Msg, RequestError};

use crate::state::PdOutput;

/// How long one Raft call may take before the caller hears `Unavailable`/`Indeterminate`.
pub const RAFT_TIMEOUT: Duration = Duration::from_secs(3);

/// Waits until reading PD's applied state is linearizable; returns the leader's term.
pub async fn read_barrier(mailbox: &Mailbox<PdOutput>) -> Result<u64, RequestError> {
    match tokio::time::timeout(RAFT_TIMEOUT, mailbox.call(|tx| Msg::Read { tx })).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(e),
        Err(_) => Err(RequestError::Unavailable(
            "no quorum confirmed leadership in time".into(),
        )),
    }
}

/// Proposes an encoded `PdCommand` and waits for what applying it produced.
pub async fn propose(mailbox: &Mailbox<PdOutput>, data: Vec<u8>) -> Result<PdOutput, RequestError> {
    match tokio::time::timeout(RAFT_TIMEOUT, mailbox.call(|tx| Msg::Propose { data, tx })).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(e),
        Err(_) => Err(RequestError::Indeterminate(
            "the change did not apply in time; it may still".into(),
        )),
    }
}
