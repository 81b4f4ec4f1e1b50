//! The endpoints a client knows, their lazily connected gRPC clients, the leader it last heard
//! from, and the rotation over them: one piece for the KV [`crate::Client`] and the
//! [`crate::PdClient`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::{lock, Error, Result};

/// Known endpoints with their clients (`C`: a generated gRPC client over a lazy channel).
pub(crate) struct Endpoints<C> {
    list: Mutex<Vec<(String, C)>>,
    leader: Mutex<Option<String>>,
    next: AtomicUsize,
}

impl<C: Clone> Endpoints<C> {
    /// The non-empty, trimmed `endpoints`, each with `connect(addr)`; `what` names them in the
    /// error when there are none.
    pub(crate) fn new<I, S>(
        endpoints: I,
        what: &str,
        connect: impl Fn(&str) -> Result<C>,
    ) -> Result<Endpoints<C>>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = Vec::new();
        for e in endpoints {
            let addr = e.as_ref().trim().to_string();
            if addr.is_empty() {
                continue;
            }
            let c = connect(&addr)?;
            list.push((addr, c));
        }
        if list.is_empty() {
            return Err(Error::InvalidArgument(format!("no {what} given")));
        }
        Ok(Endpoints {
            list: Mutex::new(list),
            leader: Mutex::new(None),
            next: AtomicUsize::new(0),
        })
    }

    /// No endpoints yet: the client learns them as it goes (PD mode: the stores it reaches).
    pub(crate) fn empty() -> Endpoints<C> {
        Endpoints {
            list: Mutex::new(Vec::new()),
            leader: Mutex::new(None),
            next: AtomicUsize::new(0),
        }
    }

    /// Every known endpoint: the configured ones plus leaders the client was pointed to.
    pub(crate) fn addrs(&self) -> Vec<String> {
        lock(&self.list).iter().map(|(a, _)| a.clone()).collect()
    }

    /// How many endpoints are known.
    pub(crate) fn len(&self) -> usize {
        lock(&self.list).len()
    }

    /// The cached leader, if any.
    pub(crate) fn leader(&self) -> Option<String> {
        lock(&self.leader).clone()
    }

    /// Records (or forgets, with None) the leader.
    pub(crate) fn set_leader(&self, leader: Option<String>) {
        *lock(&self.leader) = leader;
    }

    /// Where to send next: the cached leader, else the next endpoint in rotation.
    pub(crate) fn pick_target(&self) -> String {
        self.leader().unwrap_or_else(|| self.rotate())
    }

    /// The next endpoint in rotation.
    pub(crate) fn rotate(&self) -> String {
        let eps = lock(&self.list);
        let i = self.next.fetch_add(1, Ordering::Relaxed) % eps.len().max(1);
        eps.get(i).map(|(a, _)| a.clone()).unwrap_or_default()
    }

    /// The client for `endpoint`, connecting (lazily) and remembering it if it is new (a
    /// leader hint may name an endpoint the client was not given).
    pub(crate) fn client_for(
        &self,
        endpoint: &str,
        connect: impl FnOnce(&str) -> Result<C>,
    ) -> Result<C> {
        let mut eps = lock(&self.list);
        if let Some((_, c)) = eps.iter().find(|(a, _)| a == endpoint) {
            return Ok(c.clone());
        }
        let c = connect(endpoint)?;
        eps.push((endpoint.to_string(), c.clone()));
        Ok(c)
    }
}
