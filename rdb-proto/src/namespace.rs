//! Namespaces (specs/018-versions): named parts of the key space, each stored under its own
//! prefix, so that keys of one are never visible from another and a scan never crosses one.
//!
//! Requests carry the user's keys and the namespace's name; the server stores (and a PD-mode
//! client routes) them as [`Namespace::key`] says:
//! - `default` (or no name): the key itself. Keys beginning with [`RESERVED`] belong to rdb and
//!   are refused there; a scan of `default` ends where they begin.
//! - any other namespace: [`RESERVED`], `n`, the name, a 0 byte, then the key.
//!
//! The namespaces that exist, and their read modes, are themselves keys: those of the
//! namespace [`REGISTRY`] (name -> mode), written with a compare-and-swap that creates.

/// The first bytes of every key rdb keeps for itself (namespaces and their registry).
pub const RESERVED: &[u8] = b"\xff\xff";

/// The namespace of requests that name none.
pub const DEFAULT: &str = "default";

/// The namespace whose keys are the names of the others and whose values are their modes.
pub const REGISTRY: &str = "_namespaces";

/// Longest namespace name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// The tag after [`RESERVED`] of a namespace's keys.
const TAG: u8 = b'n';

/// How reads in a namespace are served when the request does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Linearizable reads (a read barrier first), as in `default`.
    Strong,
    /// Reads served by the replica asked, without a barrier: possibly stale, never
    /// uncommitted. Writes are the same as in every namespace (through the log, a majority).
    Eventual,
}

impl Mode {
    /// The mode's name, as stored in the registry and shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Strong => "strong",
            Mode::Eventual => "eventual",
        }
    }

    /// The mode a registry value names.
    pub fn parse(s: &[u8]) -> Option<Mode> {
        match s {
            b"strong" => Some(Mode::Strong),
            b"eventual" => Some(Mode::Eventual),
            _ => None,
        }
    }
}

/// A namespace, as keys are stored in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace {
    name: String,
    /// What its keys are stored under (empty for `default`).
    prefix: Vec<u8>,
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace {
            name: DEFAULT.into(),
            prefix: Vec::new(),
        }
    }
}

impl Namespace {
    /// The namespace a request names (empty: `default`), or why the name is not one: 1 to 64
    /// letters, digits, `-`, `_` or `.`, not beginning with `_` (rdb's own, but [`REGISTRY`]).
    pub fn parse(name: &str) -> Result<Namespace, String> {
        if name.is_empty() || name == DEFAULT {
            return Ok(Namespace::default());
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if name.len() > MAX_NAME_BYTES || !name.chars().all(allowed) {
            return Err(format!(
                "namespace name '{}' is not 1 to {MAX_NAME_BYTES} letters, digits, '-', '_' or '.'",
                name.escape_default()
            ));
        }
        if name.starts_with('_') && name != REGISTRY {
            return Err(format!(
                "namespace names beginning with '_' are rdb's own: '{name}'"
            ));
        }
        let mut prefix = RESERVED.to_vec();
        prefix.push(TAG);
        prefix.extend_from_slice(name.as_bytes());
        prefix.push(0);
        Ok(Namespace {
            name: name.into(),
            prefix,
        })
    }

    /// The namespace's name (`default` for the default one).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it is `default`.
    pub fn is_default(&self) -> bool {
        self.prefix.is_empty()
    }

    /// The name a request carries for it (empty for `default`, which every server knows).
    pub fn wire_name(&self) -> String {
        if self.is_default() {
            String::new()
        } else {
            self.name.clone()
        }
    }

    /// `key` as stored, or why it cannot be one in this namespace (a key of `default` that
    /// begins with [`RESERVED`]).
    pub fn key(&self, key: &[u8]) -> Result<Vec<u8>, String> {
        if self.is_default() {
            if key.starts_with(RESERVED) {
                return Err(
                    "keys beginning with bytes ff ff are rdb's own (namespaces); name a \
                     namespace to keep apart keys instead"
                        .into(),
                );
            }
            return Ok(key.to_vec());
        }
        let mut stored = Vec::with_capacity(self.prefix.len() + key.len());
        stored.extend_from_slice(&self.prefix);
        stored.extend_from_slice(key);
        Ok(stored)
    }

    /// The key a client routes `key` by (PD mode): as stored, and for `default` the key itself
    /// (one the server will refuse routes like any other).
    pub fn route_key(&self, key: &[u8]) -> Vec<u8> {
        self.key(key).unwrap_or_else(|_| key.to_vec())
    }

    /// The user's key of a stored one of this namespace (None: not one of its keys).
    pub fn user_key<'a>(&self, stored: &'a [u8]) -> Option<&'a [u8]> {
        if self.is_default() {
            (!stored.starts_with(RESERVED)).then_some(stored)
        } else {
            stored.strip_prefix(self.prefix.as_slice())
        }
    }

    /// The range `[start, end)` of user keys (empty `end`: to the namespace's end) as stored:
    /// always bounded, never past the namespace.
    pub fn range(&self, start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let ns_end = self.end();
        let map = |k: &[u8]| {
            if self.is_default() {
                k.min(RESERVED).to_vec()
            } else {
                let mut stored = self.prefix.clone();
                stored.extend_from_slice(k);
                stored
            }
        };
        let start = map(start);
        let end = if end.is_empty() { ns_end } else { map(end) };
        (start, end)
    }

    /// Where the namespace's stored keys end (exclusive).
    fn end(&self) -> Vec<u8> {
        if self.is_default() {
            return RESERVED.to_vec();
        }
        // The prefix ends in a 0 byte: the next prefix up is the same with a 1 there.
        let mut end = self.prefix.clone();
        if let Some(last) = end.last_mut() {
            *last = 1;
        }
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_keep_their_keys_apart() {
        let d = Namespace::parse("").expect("default");
        assert_eq!(d, Namespace::parse("default").expect("default"));
        assert_eq!(d.key(b"k"), Ok(b"k".to_vec()));
        assert!(d.key(b"\xff\xffx").is_err(), "rdb's own keys");
        assert_eq!(d.key(b"\xff\xfex"), Ok(b"\xff\xfex".to_vec()));
        let a = Namespace::parse("a").expect("a");
        let ab = Namespace::parse("ab").expect("ab");
        let ka = a.key(b"bc").expect("key");
        let kab = ab.key(b"c").expect("key");
        assert_ne!(ka, kab, "no key of one namespace is a key of another");
        assert_eq!(a.user_key(&ka), Some(&b"bc"[..]));
        assert_eq!(ab.user_key(&ka), None);
        assert_eq!(d.user_key(&ka), None);
        // Every key of a lies in a's whole range, none of ab's or default's.
        let (s, e) = a.range(b"", b"");
        assert!(s <= ka && ka < e);
        assert!(!(s <= kab && kab < e));
        let (ds, de) = d.range(b"", b"");
        assert!(ds <= b"\xff\xfe".to_vec() && b"\xff\xfe".to_vec() < de);
        assert!(!(ds <= ka && ka < de));
        assert_eq!(d.range(b"\xff\xff\xff", b""), (de.clone(), de));
    }

    #[test]
    fn names_are_checked() {
        assert!(Namespace::parse("apps.v1-x_y").is_ok());
        assert!(Namespace::parse(REGISTRY).is_ok());
        for bad in ["_x", "a/b", "a\0b", "é", &"x".repeat(65)] {
            assert!(Namespace::parse(bad).is_err(), "{bad}");
        }
    }
}
