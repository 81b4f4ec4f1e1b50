//! Namespaces (specs/018-versions): a client bound to one, and the registry of those that
//! exist (the keys of the namespace [`REGISTRY`]: names, with their modes as values).
//!
//! Requests carry the user's keys and the namespace's name; the server keeps namespaces apart.
//! A PD-mode client routes a request by its key as stored ([`Namespace::route_key`]), since
//! regions split the stored key space.

use std::borrow::Cow;
use std::sync::Arc;

use rdb_proto::namespace::{Namespace, REGISTRY};

pub use rdb_proto::namespace::Mode as NamespaceMode;

use crate::{escape_bytes, Client, Condition, Error, ReadConsistency, Result, ScanRange};

/// The namespace a client's calls go to, and how its reads are served by default.
#[derive(Debug, Clone)]
pub(crate) struct Bound {
    ns: Namespace,
    mode: NamespaceMode,
}

impl Default for Bound {
    fn default() -> Self {
        Bound {
            ns: Namespace::default(),
            mode: NamespaceMode::Strong,
        }
    }
}

impl Bound {
    /// The name requests carry (empty for `default`).
    pub(crate) fn wire_name(&self) -> String {
        self.ns.wire_name()
    }

    /// The key a request for `key` is routed by (PD mode).
    pub(crate) fn route_key<'a>(&self, key: &'a [u8]) -> Cow<'a, [u8]> {
        if self.ns.is_default() {
            Cow::Borrowed(key)
        } else {
            Cow::Owned(self.ns.route_key(key))
        }
    }
}

impl Client {
    /// A client for namespace `name` (`default`: the one every cluster has), sharing this
    /// one's connections. Fails with [`Error::NotFound`] when no such namespace was created.
    pub async fn namespace(&self, name: &str) -> Result<Client> {
        let ns = Namespace::parse(name).map_err(Error::InvalidArgument)?;
        if ns.name() == REGISTRY {
            return Err(Error::InvalidArgument(format!(
                "namespace '{REGISTRY}' is rdb's own: use namespace create and namespace list"
            )));
        }
        let mode = if ns.is_default() {
            NamespaceMode::Strong
        } else {
            match self
                .registry()?
                .get_with(ns.name(), ReadConsistency::Linearizable)
                .await?
            {
                None => {
                    return Err(Error::NotFound(format!(
                        "namespace '{}' does not exist (create it: rdb-cli namespace create {} \
                         --mode strong|eventual)",
                        ns.name(),
                        ns.name()
                    )))
                }
                Some(v) => mode_of(ns.name(), &v)?,
            }
        };
        Ok(self.bound_to(ns, mode))
    }

    /// The namespace this client's calls go to.
    pub fn namespace_name(&self) -> &str {
        self.ns.ns.name()
    }

    /// How this client's reads are served when a call does not say: linearizable, or in an
    /// `eventual` namespace serializable (any replica, no read barrier).
    pub fn default_consistency(&self) -> ReadConsistency {
        match self.ns.mode {
            NamespaceMode::Strong => ReadConsistency::Linearizable,
            NamespaceMode::Eventual => ReadConsistency::Serializable,
        }
    }

    /// Creates namespace `name` with `mode`. Returns false when it exists already with that
    /// mode; fails with [`Error::FailedPrecondition`] when it exists with the other one.
    pub async fn create_namespace(&self, name: &str, mode: NamespaceMode) -> Result<bool> {
        let ns = Namespace::parse(name).map_err(Error::InvalidArgument)?;
        if ns.is_default() || ns.name() == REGISTRY {
            return Err(Error::InvalidArgument(format!(
                "namespace '{}' is rdb's own and always exists",
                ns.name()
            )));
        }
        let registry = self.registry()?;
        let made = registry
            .cas_if(ns.name(), Condition::Version(0), mode.as_str())
            .await?;
        if made.succeeded {
            return Ok(true);
        }
        // It exists: the same mode is what the caller wanted (a retry, or a second creator).
        let existing = registry
            .get_with(ns.name(), ReadConsistency::Linearizable)
            .await?
            .map(|v| mode_of(ns.name(), &v))
            .transpose()?;
        match existing {
            Some(m) if m == mode => Ok(false),
            Some(m) => Err(Error::FailedPrecondition(format!(
                "namespace '{}' exists already, with mode {}",
                ns.name(),
                m.as_str()
            ))),
            // Created and then removed by hand in between: not for this call to decide.
            None => Err(Error::Unavailable(format!(
                "namespace '{}' changed while it was created; try again",
                ns.name()
            ))),
        }
    }

    /// Every namespace created, with its mode, in name order (`default` is not listed: it
    /// always exists, `strong`).
    pub async fn namespaces(&self) -> Result<Vec<(String, NamespaceMode)>> {
        let registry = self.registry()?;
        let page = registry
            .scan(ScanRange::default(), ReadConsistency::Linearizable)
            .await?;
        page.kvs
            .into_iter()
            .map(|(k, v)| {
                let name = String::from_utf8(k).map_err(|e| {
                    Error::Unavailable(format!(
                        "the namespace registry holds a name that is not text: '{}'",
                        escape_bytes(e.as_bytes())
                    ))
                })?;
                let mode = mode_of(&name, &v)?;
                Ok((name, mode))
            })
            .collect()
    }

    /// This client's connections, bound to `ns` read as `mode` says.
    pub(crate) fn bound_to(&self, ns: Namespace, mode: NamespaceMode) -> Client {
        Client {
            inner: self.inner.clone(),
            ns: Arc::new(Bound { ns, mode }),
        }
    }

    /// This client's connections, bound to the registry.
    fn registry(&self) -> Result<Client> {
        let ns = Namespace::parse(REGISTRY).map_err(Error::InvalidArgument)?;
        Ok(self.bound_to(ns, NamespaceMode::Strong))
    }
}

/// The mode a registry entry holds, or why it holds none.
fn mode_of(name: &str, value: &[u8]) -> Result<NamespaceMode> {
    NamespaceMode::parse(value).ok_or_else(|| {
        Error::Unavailable(format!(
            "the namespace registry says namespace '{name}' has mode '{}', which is none",
            escape_bytes(value)
        ))
    })
}
