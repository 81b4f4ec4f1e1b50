//! Where the attempts of one call go ([`Route`], [`Target`]) and what they learned so far
//! ([`Progress`], [`Outcome`]): the vocabulary shared by the retry loop ([`crate::retry`]) and
//! PD-mode routing ([`crate::routing`]), below both.

use rdb_proto::kv::RegionContext;

use crate::pd::{Peer, Region};
use crate::regions::CachedRegion;
use crate::Error;

/// Where one attempt goes.
pub(crate) struct Target {
    /// The node's (PD mode: the store's) client address.
    pub(crate) addr: String,
    /// PD mode: the region the request is for (its context goes with it) and the peer addressed.
    pub(crate) region: Option<(CachedRegion, Peer)>,
}

impl Target {
    /// The request's region context: `None` outside PD mode.
    pub(crate) fn context(&self) -> Option<RegionContext> {
        self.region.as_ref().map(|(r, _)| region_context(&r.region))
    }
}

/// The context naming `region` and its epoch in a request.
pub(crate) fn region_context(region: &Region) -> RegionContext {
    RegionContext {
        region_id: region.id,
        epoch: Some(rdb_proto::pd::RegionEpoch {
            version: region.epoch.version,
            conf_ver: region.epoch.conf_ver,
        }),
    }
}

/// Where the attempts of one call go.
#[derive(Clone, Copy)]
pub(crate) enum Route<'a> {
    /// The configured endpoints: the leader, or with `any_node` the next one in rotation (an
    /// answer then does not make that node the known leader).
    Group { any_node: bool },
    /// PD mode: the leader of the region holding every one of `keys` (the first key's region);
    /// with `any_peer`, an answer does not make the peer the known leader (serializable reads).
    Region {
        keys: &'a [&'a [u8]],
        any_peer: bool,
    },
}

/// How a call ended.
pub(crate) enum Outcome<T> {
    /// The answer.
    Done(T),
    /// The keys no longer lie in one region (a split): the caller cuts them again.
    Regroup,
}

/// What the attempts of one call have learned so far; carried over when a batch's part is cut
/// again after a split, so its outcome at the deadline is still reported right.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    /// A write attempt may have been applied (no answer, or an `Indeterminate` one).
    pub(crate) maybe_applied: bool,
    /// The latest failure, reported at the deadline.
    pub(crate) last_err: Error,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            maybe_applied: false,
            last_err: Error::Unavailable("no node answered".into()),
        }
    }
}

impl Progress {
    /// The call's error once it gives up: [`Error::Indeterminate`] for a write that may have
    /// been applied, else the latest failure.
    pub(crate) fn at_deadline(&self, write: bool) -> Error {
        if write && self.maybe_applied {
            Error::Indeterminate(format!(
                "outcome unknown at the deadline; last error: {}",
                self.last_err
            ))
        } else {
            self.last_err.clone()
        }
    }

    /// `err` as the call's final error: [`Error::Indeterminate`] if a write may have been applied.
    pub(crate) fn fail(&self, write: bool, err: Error) -> Error {
        match err {
            Error::Indeterminate(_) => err,
            err if write && self.maybe_applied => {
                Error::Indeterminate(format!("outcome unknown; last error: {err}"))
            }
            err => err,
        }
    }
}
