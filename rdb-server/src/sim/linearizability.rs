//! Linearizability checker for a per-key register model (Get/Put/Delete/CAS), with the key's
//! versions when the answers report them (specs/018-versions).
//!
//! The algorithm is Wing & Gong's search with Lowe's memoisation, as popularised by
//! Porcupine. Operations on different keys are independent, so the history is split
//! by key and each sub-history is checked on its own, keys in sorted order.
//!
//! For one key, every operation becomes a call event (at `invoke`) and a return
//! event (at `complete`). The events are sorted by time, with calls before returns
//! at equal times, so `A.complete == B.invoke` counts as concurrent. They go into a
//! doubly linked list. The search walks the list from the head. At a call, it tries
//! to linearize that operation against the model state. On success it removes both
//! events ("lift"), pushes the step onto a backtracking stack and starts again from
//! the head. Reaching a return event means that operation should already have been
//! linearized, so the search backtracks. A cache of (linearized-set bitset, model
//! state) pairs skips configurations it has already explored. One extra pruning rule:
//! read-only steps (`Get`, a `Cas` that reported `false`, a conditional delete that was
//! refused) are never alternatives worth revisiting. If the search fails after one, it
//! also gives up on the configuration the read-only step was taken from.
//!
//! `Failed` operations and indeterminate `Get`s are dropped. Indeterminate writes
//! get a return time of +infinity and are optional: the search stops with success
//! as soon as every non-optional operation is linearized. An indeterminate CAS (or
//! conditional delete) takes effect iff its condition holds at its linearization point.
//!
//! **Versions.** A [`VersionedOperation`] may carry a condition on the key's versions (a CAS
//! or delete by version or by `mod_revision`, 0: the key must not exist) and what its answer
//! said of revisions ([`Seen`]). In a key whose sub-history has either, the model state
//! also holds the key's `version` (1 at creation, +1 per change, 0 when absent),
//! `create_revision` and `mod_revision`, and a floor: a lower bound on the revision of the
//! key's last change. Then a write that changed the key must report a revision above the
//! floor (revisions of one key strictly increase in linearization order), which becomes the
//! key's `mod_revision`; anything that changed nothing (a read, a failed CAS, a refused
//! delete, a delete of an absent key) must report a revision at or above the floor (the
//! region's last revision is at least the key's last change); a read's versions must be the
//! model's; a conditional write succeeds iff its condition holds. A write whose revision
//! nobody heard (indeterminate, or an answer without one) leaves the key's revisions unknown
//! (the floor goes up by one): reads and conditions by `mod_revision` accept any revision
//! at or above the floor until a known one replaces it. Reads never narrow what is unknown,
//! so they stay read-only and the pruning rule above stays sound. A key whose operations
//! report nothing of versions is checked on values alone, as before versions existed.
//!
//! What it does not do: it does not check operations that span several keys
//! (transactions, scans); it has no model of session guarantees weaker than
//! linearizability; it checks the revision a no-change answer reports only against the
//! key's own writes (the region's other keys move it too); and an `Unknown` result carries
//! no partial counter-example. An operation whose outcome does not match its kind (e.g. a
//! `Put` with `Outcome::Cas(_)`) can never be linearized, so it makes the key `Illegal`.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// A client operation on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Read the key's current value.
    Get {
        /// Key to read.
        key: String,
    },
    /// Set the key to `value`.
    Put {
        /// Key to write.
        key: String,
        /// Value to store.
        value: String,
    },
    /// Remove the key.
    Delete {
        /// Key to remove.
        key: String,
    },
    /// Compare-and-swap: if the current value equals `expected` (None = key absent), set it to `new`.
    Cas {
        /// Key to update.
        key: String,
        /// Value the key must hold for the swap (None = key absent).
        expected: Option<String>,
        /// Value stored if the swap happens.
        new: String,
    },
}

impl Op {
    /// The key this operation acts on.
    pub fn key(&self) -> &str {
        match self {
            Op::Get { key } | Op::Put { key, .. } | Op::Delete { key } | Op::Cas { key, .. } => key,
        }
    }
}

/// What the client observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Get returned this value (None = not found).
    Get(Option<String>),
    /// Put was acknowledged.
    Put,
    /// Delete was acknowledged (a conditional one: its condition held).
    Delete,
    /// Cas returned whether it swapped.
    Cas(bool),
    /// A conditional delete whose condition did not hold: nothing was deleted.
    Refused,
    /// Definitely not applied (e.g. rejected before proposing). Such operations are ignored.
    Failed,
    /// May or may not have taken effect, at any time after `invoke` (e.g. timeout after proposing).
    Indeterminate,
}

/// One client call with its observed outcome and real-time interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Client (process) identifier.
    pub client: u64,
    /// What was requested.
    pub op: Op,
    /// What was observed.
    pub outcome: Outcome,
    /// Monotonic nanoseconds when the call was issued.
    pub invoke: u64,
    /// Monotonic nanoseconds when the result arrived; ignored for Indeterminate (treated as +infinity).
    pub complete: u64,
}

/// A condition on a key's versions that a conditional CAS or delete sends (specs/018-versions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Condition {
    /// The key's version must be this (0: the key must not exist).
    Version(u64),
    /// The key's `mod_revision` must be this (0: the key must not exist).
    ModRevision(u64),
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Version(v) => write!(f, "version={v}"),
            Condition::ModRevision(r) => write!(f, "mod_revision={r}"),
        }
    }
}

/// A key's versions as an answer reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyMeta {
    /// The revision that created the key (since its last delete).
    pub create_revision: u64,
    /// The revision of its last change.
    pub mod_revision: u64,
    /// 1 at creation, +1 per change.
    pub version: u64,
}

impl fmt::Display for KeyMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (v, m, c) = (self.version, self.mod_revision, self.create_revision);
        write!(f, "version {v}, mod_revision {m}, create_revision {c}")
    }
}

/// What an answer said of revisions, checked against the model's versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// The answer's revision: a write that changed the key, its own; anything else (a read,
    /// a write that changed nothing), the region's last revision when it was served.
    pub revision: u64,
    /// A read's versions of the key (None: not found, as its value); a conditional write
    /// that did not hold, the key's current versions when the answer gave them (None: not
    /// given, or absent). Ignored for writes that changed the key.
    pub meta: Option<KeyMeta>,
}

/// A call of the versioned API (specs/018-versions): an [`Operation`], the condition on
/// versions of a conditional CAS or delete, and what its answer said of revisions. Kept apart
/// from [`Operation`] so that histories without versions read as they always did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionedOperation {
    /// The call, its outcome and its times. With a condition, a CAS's `expected` is not
    /// compared (the API ignores it too), and a delete's outcome is `Delete` (the condition
    /// held) or `Refused`.
    pub call: Operation,
    /// For a CAS or a delete: the versions the key must have (None: a CAS by value, an
    /// unconditional delete).
    pub condition: Option<Condition>,
    /// What the answer said of revisions (None: nothing, as for failed or indeterminate calls).
    pub seen: Option<Seen>,
}

impl From<Operation> for VersionedOperation {
    fn from(call: Operation) -> Self {
        VersionedOperation {
            call,
            condition: None,
            seen: None,
        }
    }
}

/// Verdict of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    /// Every key's sub-history is linearizable.
    Linearizable,
    /// Not linearizable; the explanation is human-readable.
    Illegal(Violation),
    /// The step budget ran out before a verdict on some key.
    Unknown {
        /// The first key (in sorted order) whose search ran out of budget.
        key: String,
    },
}

/// Evidence that one key's sub-history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key whose sub-history is not linearizable.
    pub key: String,
    /// The operations on this key, sorted by invoke time (the minimal sub-history the checker looked at).
    pub history: Vec<VersionedOperation>,
    /// The longest prefix of operations (in linearization order) the search managed to place.
    pub longest_linearized: Vec<VersionedOperation>,
    /// Operations that could not be placed after that prefix (the ones that were candidates at that point).
    pub stuck_on: Vec<VersionedOperation>,
}

fn fmt_ns(ns: u64) -> String {
    match ns {
        0..=999 => format!("{ns}ns"),
        1_000..=999_999 => format!("{:.1}us", ns as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.3}ms", ns as f64 / 1e6),
        _ => format!("{:.3}s", ns as f64 / 1e9),
    }
}

fn describe(v: &VersionedOperation, t0: u64) -> String {
    let o = &v.call;
    let t = |ns: u64| fmt_ns(ns.saturating_sub(t0));
    let end = match o.outcome {
        Outcome::Indeterminate => "?".to_string(),
        _ => format!("+{}", t(o.complete)),
    };
    let call = match (&o.op, v.condition) {
        (Op::Get { .. }, _) => "get()".to_string(),
        (Op::Put { value, .. }, _) => format!("put({value:?})"),
        (Op::Delete { .. }, None) => "delete()".to_string(),
        (Op::Delete { .. }, Some(c)) => format!("delete(if {c})"),
        (Op::Cas { new, .. }, Some(c)) => format!("cas(if {c} -> {new:?})"),
        (Op::Cas { expected, new, .. }, None) => {
            let e = expected
                .as_ref()
                .map_or("<absent>".into(), |e| format!("{e:?}"));
            format!("cas({e} -> {new:?})")
        }
    };
    let result = match &o.outcome {
        Outcome::Get(Some(v)) => format!("{v:?}"),
        Outcome::Get(None) => "<not found>".to_string(),
        Outcome::Put | Outcome::Delete => "ok".to_string(),
        Outcome::Cas(b) => b.to_string(),
        Outcome::Refused => "refused".to_string(),
        Outcome::Failed => "failed".to_string(),
        Outcome::Indeterminate => "indeterminate".to_string(),
    };
    let seen = match v.seen {
        None => String::new(),
        Some(Seen {
            revision,
            meta: Some(m),
        }) => format!(" ({m}) at revision {revision}"),
        Some(Seen {
            revision,
            meta: None,
        }) => format!(" at revision {revision}"),
    };
    let (start, client) = (t(o.invoke), o.client);
    format!("[+{start} .. {end}] client {client}: {call} -> {result}{seen}")
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t0 = self
            .history
            .iter()
            .map(|o| o.call.invoke)
            .min()
            .unwrap_or(0);
        let (key, n) = (&self.key, self.history.len());
        writeln!(
            f,
            "key {key:?} is not linearizable ({n} ops; times from first invoke)"
        )?;
        let m = self.longest_linearized.len();
        writeln!(f, "longest linearizable prefix ({m} ops):")?;
        for o in &self.longest_linearized {
            writeln!(f, "  {}", describe(o, t0))?;
        }
        writeln!(f, "stuck: none of these can be linearized next:")?;
        for o in &self.stuck_on {
            writeln!(f, "  {}", describe(o, t0))?;
        }
        Ok(())
    }
}

/// What a model write compares, with values interned to small integers.
#[derive(Debug, Clone, Copy)]
enum Cond {
    /// Nothing: an unconditional delete.
    Always,
    /// The value (None: absent).
    Value(Option<u32>),
    /// The version (0: absent).
    Version(u64),
    /// The `mod_revision` (0: absent).
    ModRevision(u64),
}

/// Model operation on one key, with values interned to small integers. Revisions are the
/// ones the answer reported (None: not reported, or indeterminate).
#[derive(Debug, Clone, Copy)]
enum KOp {
    /// A read: its value, and when the answer said, its revision and the key's versions.
    Get(Option<u32>, Option<(u64, Option<KeyMeta>)>),
    /// A put and its revision.
    Put(u32, Option<u64>),
    /// A CAS; `swapped` is None when the outcome is indeterminate; `current` is what a failed
    /// one reported of the key's versions.
    Cas {
        cond: Cond,
        new: u32,
        swapped: Option<bool>,
        rev: Option<u64>,
        current: Option<KeyMeta>,
    },
    /// A delete (a conditional one when `cond` is not `Always`); `held` is None when the
    /// outcome is indeterminate, `Some(false)` when it was refused.
    Delete {
        cond: Cond,
        held: Option<bool>,
        rev: Option<u64>,
        current: Option<KeyMeta>,
    },
    /// Outcome does not match the operation kind: never linearizable.
    Malformed,
}

/// The model of one key. Only `value` is tracked in a key whose history says nothing of
/// versions; the rest stays at its default there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
struct State {
    /// The value (None: absent).
    value: Option<u32>,
    /// The key's version (0 when absent).
    version: u64,
    /// `create_revision` when known (None: absent, or made by a write whose revision nobody heard).
    create: Option<u64>,
    /// `mod_revision` when known (None: absent, or changed last by a write whose revision
    /// nobody heard).
    modr: Option<u64>,
    /// A lower bound on the revision of the key's last change (its last put or delete).
    floor: u64,
}

impl State {
    /// The state after a write that changed the key to `value` (None: deleted) at `rev`
    /// (None: not heard), or None if `rev` does not come after the key's last change.
    fn change(self, value: Option<u32>, rev: Option<u64>, track: bool) -> Option<State> {
        if !track {
            return Some(State {
                value,
                ..State::default()
            });
        }
        if rev.is_some_and(|r| r <= self.floor) {
            return None;
        }
        // A change whose revision nobody heard still came after the last one.
        let floor = rev.unwrap_or(self.floor + 1);
        Some(match (value, self.value) {
            (None, _) => State {
                floor,
                ..State::default()
            },
            (Some(_), Some(_)) => State {
                value,
                version: self.version + 1,
                create: self.create,
                modr: rev,
                floor,
            },
            (Some(_), None) => State {
                value,
                version: 1,
                create: rev,
                modr: rev,
                floor,
            },
        })
    }

    /// Whether an answer that changed nothing fits: its revision (the region's last) is at
    /// or above the key's last change, and the versions it reports are the key's.
    fn unchanged(self, rev: Option<u64>, meta: Option<KeyMeta>) -> bool {
        rev.is_none_or(|r| r >= self.floor)
            && meta.is_none_or(|m| self.shows(m) && rev.is_none_or(|r| m.mod_revision <= r))
    }

    /// Whether the key, as modelled, can have the versions `m`.
    fn shows(self, m: KeyMeta) -> bool {
        self.value.is_some()
            && m.version == self.version
            && self
                .modr
                .map_or(m.mod_revision >= self.floor, |r| r == m.mod_revision)
            && self
                .create
                .map_or(m.create_revision <= m.mod_revision, |c| {
                    c == m.create_revision
                })
            && (m.version != 1 || m.create_revision == m.mod_revision)
    }

    /// Whether `cond` holds: None when the model cannot tell (a `mod_revision` nobody heard).
    fn holds(self, cond: Cond) -> Option<bool> {
        match cond {
            Cond::Always => Some(true),
            Cond::Value(e) => Some(self.value == e),
            Cond::Version(v) => Some(self.version == v),
            Cond::ModRevision(r) => match (self.value, self.modr) {
                (None, _) => Some(r == 0),
                (Some(_), Some(m)) => Some(m == r),
                // Changed last at some revision above the floor.
                (Some(_), None) if r >= self.floor.max(1) => None,
                (Some(_), None) => Some(false),
            },
        }
    }
}

impl KOp {
    /// Legal only where it leaves the state unchanged. Such an op, once it is a candidate,
    /// can be moved to the front of any valid continuation, so it is tried greedily: if
    /// the search fails after it, the configuration it was placed in fails too.
    fn is_read_only(self) -> bool {
        matches!(
            self,
            KOp::Get(..)
                | KOp::Cas {
                    swapped: Some(false),
                    ..
                }
                | KOp::Delete {
                    held: Some(false),
                    ..
                }
        )
    }
}

/// The state after `op` at `state`, or None if `op` cannot be linearized there. `track`: the
/// key's versions are modelled.
fn step(state: State, op: KOp, track: bool) -> Option<State> {
    let unchanged = |rev, meta| state.unchanged(rev, meta).then_some(state);
    match op {
        KOp::Get(v, seen) => {
            let fits = seen.is_none_or(|(rev, meta)| state.unchanged(Some(rev), meta));
            (v == state.value && fits).then_some(state)
        }
        KOp::Put(v, rev) => state.change(Some(v), rev, track),
        KOp::Cas {
            cond,
            new,
            swapped,
            rev,
            current,
        } => match (swapped, state.holds(cond)) {
            (Some(true), Some(true) | None) => state.change(Some(new), rev, track),
            (Some(false), Some(false) | None) => unchanged(rev, current),
            // Indeterminate: it took effect iff the condition held (when the model cannot
            // tell, "it did not" is the same as not linearizing it at all).
            (None, Some(true) | None) => state.change(Some(new), None, track),
            (None, Some(false)) => Some(state),
            _ => None,
        },
        KOp::Delete {
            cond,
            held,
            rev,
            current,
        } => {
            let delete = |rev| match state.value {
                Some(_) => state.change(None, rev, track),
                None => unchanged(rev, None),
            };
            match (held, state.holds(cond)) {
                (Some(true), Some(true) | None) => delete(rev),
                (Some(false), Some(false) | None) => unchanged(rev, current),
                (None, Some(true) | None) => delete(None),
                (None, Some(false)) => Some(state),
                _ => None,
            }
        }
        KOp::Malformed => None,
    }
}

fn intern<'a>(ids: &mut HashMap<&'a str, u32>, s: &'a str) -> u32 {
    let next = ids.len() as u32;
    *ids.entry(s).or_insert(next)
}

/// Builds the model ops for one key's already-filtered operations; the bool is "optional".
fn to_model(ops: &[VersionedOperation]) -> Vec<(KOp, bool)> {
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let mut model = Vec::with_capacity(ops.len());
    for v in ops {
        let o = &v.call;
        let indet = o.outcome == Outcome::Indeterminate;
        let rev = v.seen.map(|s| s.revision);
        let current = v.seen.and_then(|s| s.meta);
        let cond = v.condition.map(|c| match c {
            Condition::Version(n) => Cond::Version(n),
            Condition::ModRevision(r) => Cond::ModRevision(r),
        });
        let kop = match (&o.op, &o.outcome, cond) {
            (Op::Get { .. }, Outcome::Get(val), None) => {
                let seen = v.seen.map(|s| (s.revision, s.meta));
                // A read reports versions exactly when it found the key.
                if seen.is_some_and(|(_, meta)| meta.is_some() != val.is_some()) {
                    KOp::Malformed
                } else {
                    KOp::Get(val.as_deref().map(|x| intern(&mut ids, x)), seen)
                }
            }
            (Op::Put { value, .. }, Outcome::Put | Outcome::Indeterminate, None) => {
                KOp::Put(intern(&mut ids, value), rev)
            }
            (Op::Delete { .. }, Outcome::Delete | Outcome::Refused | Outcome::Indeterminate, _) => {
                let held = (!indet).then(|| o.outcome == Outcome::Delete);
                match cond {
                    // An unconditional delete is never refused.
                    None if held == Some(false) => KOp::Malformed,
                    _ => KOp::Delete {
                        cond: cond.unwrap_or(Cond::Always),
                        held,
                        rev,
                        current,
                    },
                }
            }
            (Op::Cas { expected, new, .. }, Outcome::Cas(_) | Outcome::Indeterminate, _) => {
                let cond = cond.unwrap_or_else(|| {
                    Cond::Value(expected.as_deref().map(|e| intern(&mut ids, e)))
                });
                KOp::Cas {
                    cond,
                    new: intern(&mut ids, new),
                    swapped: (!indet).then(|| o.outcome == Outcome::Cas(true)),
                    rev,
                    current,
                }
            }
            _ => KOp::Malformed,
        };
        model.push((kop, indet));
    }
    model
}

enum KeyVerdict {
    Linearizable,
    /// Indices (into the key's ops) of the longest linearized prefix and the stuck candidates.
    Illegal(Vec<usize>, Vec<usize>),
    Unknown,
}

/// Doubly linked event list: node 0 is the head sentinel, 1..=2n are events, and 2n+1 is a
/// tail sentinel that behaves like a return event (reaching it means: backtrack).
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    op_of: Vec<usize>,
    is_call: Vec<bool>,
    ret_node: Vec<usize>,
}

impl Events {
    fn new(times: &[(u64, u64)]) -> Self {
        let (n, len) = (times.len(), 2 * times.len() + 2);
        let mut evs: Vec<(u64, bool, usize)> = times
            .iter()
            .enumerate()
            .flat_map(|(i, &(call, ret))| [(call, false, i), (ret, true, i)])
            .collect();
        evs.sort_unstable(); // `false` sorts first: calls precede returns at equal times
        let mut e = Events {
            next: (1..=len).collect(),
            prev: (0..len).map(|i| i.saturating_sub(1)).collect(),
            op_of: vec![0; len],
            is_call: vec![false; len],
            ret_node: vec![0; n],
        };
        for (k, &(_, is_ret, i)) in evs.iter().enumerate() {
            (e.op_of[k + 1], e.is_call[k + 1]) = (i, !is_ret);
            if is_ret {
                e.ret_node[i] = k + 1;
            }
        }
        e
    }

    /// Removes a call node and its matching return node.
    fn lift(&mut self, call: usize) {
        for x in [call, self.ret_node[self.op_of[call]]] {
            let (p, n) = (self.prev[x], self.next[x]);
            (self.next[p], self.prev[n]) = (n, p);
        }
    }

    /// Undoes `lift` (in reverse order, dancing-links style).
    fn unlift(&mut self, call: usize) {
        for x in [self.ret_node[self.op_of[call]], call] {
            let (p, n) = (self.prev[x], self.next[x]);
            (self.next[p], self.prev[n]) = (x, x);
        }
    }

    /// Ops whose call events come before the first return event: the candidates to linearize next.
    fn candidates(&self) -> Vec<usize> {
        let (mut out, mut x) = (Vec::new(), self.next[0]);
        while self.is_call[x] {
            out.push(self.op_of[x]);
            x = self.next[x];
        }
        out
    }
}

/// Wing & Gong / Lowe search over one key's sub-history; `track`: model the key's versions.
fn check_key(model: &[(KOp, bool)], times: &[(u64, u64)], budget: u64, track: bool) -> KeyVerdict {
    let mut ev = Events::new(times);
    let mut remaining = model.iter().filter(|(_, optional)| !optional).count();
    let mut state = State::default();
    let mut linearized = vec![0u64; model.len().div_ceil(64)];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State, bool)> = Vec::new();
    let (mut best, mut best_stuck) = (Vec::new(), ev.candidates());
    let (mut steps, mut entry) = (0u64, ev.next[0]);
    loop {
        if remaining == 0 {
            return KeyVerdict::Linearizable;
        }
        if steps >= budget {
            return KeyVerdict::Unknown;
        }
        steps += 1;
        if ev.is_call[entry] {
            let i = ev.op_of[entry];
            if let Some(new_state) = step(state, model[i].0, track) {
                linearized[i / 64] |= 1 << (i % 64);
                if cache.insert((linearized.clone(), new_state)) {
                    stack.push((entry, state, model[i].0.is_read_only()));
                    state = new_state;
                    ev.lift(entry);
                    remaining -= usize::from(!model[i].1);
                    if stack.len() > best.len() {
                        best = stack.iter().map(|&(c, _, _)| ev.op_of[c]).collect();
                        best_stuck = ev.candidates();
                    }
                    entry = ev.next[0];
                    continue;
                }
                linearized[i / 64] &= !(1 << (i % 64));
            }
            entry = ev.next[entry];
        } else {
            // A return event: backtrack. Popping a read-only frame means that its
            // parent configuration failed as a whole, so keep popping.
            loop {
                let Some((call, prev_state, read_only)) = stack.pop() else {
                    return KeyVerdict::Illegal(best, best_stuck);
                };
                let i = ev.op_of[call];
                linearized[i / 64] &= !(1 << (i % 64));
                state = prev_state;
                ev.unlift(call);
                remaining += usize::from(!model[i].1);
                if !read_only {
                    entry = ev.next[call];
                    break;
                }
            }
        }
    }
}

/// Check a whole history. `step_budget` bounds the total search steps per key; return Unknown instead of hanging.
pub fn check(history: &[Operation], step_budget: u64) -> CheckResult {
    let versioned: Vec<VersionedOperation> = history.iter().cloned().map(Into::into).collect();
    check_versioned(&versioned, step_budget)
}

/// Check a history of the versioned API: values as [`check`] does, and in every key whose
/// calls carry conditions or report revisions, the key's versions too (see the module's
/// documentation). `step_budget` bounds the total search steps per key.
pub fn check_versioned(history: &[VersionedOperation], step_budget: u64) -> CheckResult {
    let mut by_key: BTreeMap<&str, Vec<VersionedOperation>> = BTreeMap::new();
    for v in history {
        match (&v.call.op, &v.call.outcome) {
            (_, Outcome::Failed) | (Op::Get { .. }, Outcome::Indeterminate) => {}
            _ => by_key.entry(v.call.op.key()).or_default().push(v.clone()),
        }
    }
    let mut unknown: Option<String> = None;
    for (key, mut ops) in by_key {
        ops.sort_by_key(|v| v.call.invoke); // stable: ties keep input order
        let times: Vec<(u64, u64)> = ops
            .iter()
            .map(|v| match v.call.outcome {
                Outcome::Indeterminate => (v.call.invoke, u64::MAX),
                _ => (v.call.invoke, v.call.complete.max(v.call.invoke)),
            })
            .collect();
        let track = ops
            .iter()
            .any(|v| v.condition.is_some() || v.seen.is_some());
        match check_key(&to_model(&ops), &times, step_budget, track) {
            KeyVerdict::Linearizable => {}
            KeyVerdict::Unknown => {
                unknown.get_or_insert_with(|| key.to_string());
            }
            KeyVerdict::Illegal(best, stuck) => {
                return CheckResult::Illegal(Violation {
                    key: key.to_string(),
                    longest_linearized: best.iter().map(|&i| ops[i].clone()).collect(),
                    stuck_on: stuck.iter().map(|&i| ops[i].clone()).collect(),
                    history: ops,
                });
            }
        }
    }
    match unknown {
        Some(key) => CheckResult::Unknown { key },
        None => CheckResult::Linearizable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk(client: u64, op: Op, outcome: Outcome, invoke: u64, complete: u64) -> Operation {
        Operation {
            client,
            op,
            outcome,
            invoke,
            complete,
        }
    }

    /// Parses "put k v I C; get k v|- I C; del k I C; cas k exp|- new ok|no I C", one op per
    /// client; a trailing `?` makes the outcome Indeterminate and `!` makes it Failed.
    fn h(spec: &str) -> Vec<Operation> {
        let opt = |x: &str| (x != "-").then(|| x.to_string());
        let parts = spec.split(';').filter(|s| !s.trim().is_empty());
        let mut out = Vec::new();
        for (client, s) in (0..).zip(parts) {
            let t: Vec<&str> = s.split_whitespace().collect();
            let (key, value, expected, new) = (t[1].into(), t[2].into(), opt(t[2]), t[3].into());
            let (op, outcome, at) = match t[0] {
                "get" => (Op::Get { key }, Outcome::Get(opt(t[2])), 3),
                "put" => (Op::Put { key, value }, Outcome::Put, 3),
                "del" => (Op::Delete { key }, Outcome::Delete, 2),
                _ => (
                    Op::Cas { key, expected, new },
                    Outcome::Cas(t[4] == "ok"),
                    5,
                ),
            };
            let outcome = match t.get(at + 2) {
                Some(&"?") => Outcome::Indeterminate,
                Some(&"!") => Outcome::Failed,
                _ => outcome,
            };
            let n = |i: usize| t[i].parse::<u64>().unwrap();
            out.push(mk(client, op, outcome, n(at), n(at + 1)));
        }
        out
    }
    fn illegal(spec: &str) -> Violation {
        match check(&h(spec), 100_000) {
            CheckResult::Illegal(v) => v,
            other => panic!("expected Illegal for {spec}, got {other:?}"),
        }
    }
    fn ok(spec: &str) {
        let result = check(&h(spec), 100_000);
        assert_eq!(result, CheckResult::Linearizable, "{spec}");
    }

    /// Parses a history as `h` does, where an op may also carry `@R` (the revision its answer
    /// reported), `meta=V/M/C` (the versions it reported: version, mod_revision,
    /// create_revision), `ver=N` or `modrev=N` (the condition of a CAS or delete; a CAS's
    /// expected value is then not compared) and `refused` (a conditional delete that did not
    /// hold).
    fn hv(spec: &str) -> Vec<VersionedOperation> {
        let n = |t: &str| t.parse::<u64>().unwrap();
        let parts = spec.split(';').filter(|s| !s.trim().is_empty());
        let mut out = Vec::new();
        for (client, s) in (0..).zip(parts) {
            let (notes, plain): (Vec<&str>, Vec<&str>) = s
                .split_whitespace()
                .partition(|t| t.starts_with('@') || t.contains('=') || *t == "refused");
            let mut v = VersionedOperation::from(h(&plain.join(" ")).remove(0));
            v.call.client = client;
            let seen = |v: &VersionedOperation| {
                v.seen.unwrap_or(Seen {
                    revision: 0,
                    meta: None,
                })
            };
            for t in notes {
                match t.split_once('=') {
                    Some(("ver", x)) => v.condition = Some(Condition::Version(n(x))),
                    Some(("modrev", x)) => v.condition = Some(Condition::ModRevision(n(x))),
                    Some(("meta", x)) => {
                        let m: Vec<u64> = x.split('/').map(n).collect();
                        let meta = KeyMeta {
                            version: m[0],
                            mod_revision: m[1],
                            create_revision: m[2],
                        };
                        v.seen = Some(Seen {
                            meta: Some(meta),
                            ..seen(&v)
                        });
                    }
                    _ if t == "refused" => {
                        if v.call.outcome == Outcome::Delete {
                            v.call.outcome = Outcome::Refused;
                        }
                    }
                    _ => {
                        v.seen = Some(Seen {
                            revision: n(&t[1..]),
                            ..seen(&v)
                        })
                    }
                }
            }
            out.push(v);
        }
        out
    }
    fn v_illegal(spec: &str) -> Violation {
        match check_versioned(&hv(spec), 100_000) {
            CheckResult::Illegal(v) => v,
            other => panic!("expected Illegal for {spec}, got {other:?}"),
        }
    }
    fn v_ok(spec: &str) {
        let result = check_versioned(&hv(spec), 100_000);
        assert_eq!(result, CheckResult::Linearizable, "{spec}");
    }
    /// `spec` is illegal for its versions alone: without them, its values fit.
    fn illegal_by_versions(spec: &str) {
        let plain: Vec<Operation> = hv(spec).into_iter().map(|v| v.call).collect();
        assert_eq!(check(&plain, 100_000), CheckResult::Linearizable, "{spec}");
        v_illegal(spec);
    }

    #[test]
    fn accepts_histories_whose_versions_fit() {
        // A key's life: created, changed, deleted, created again at version 1.
        v_ok(
            "put k a @1 0 10; get k a meta=1/1/1 @1 20 30; put k b @3 40 50; \
             get k b meta=2/3/1 @4 60 70; del k @5 80 90; get k - @5 100 110; \
             put k c @8 120 130; get k c meta=1/8/8 @9 140 150",
        );
        // Reads and writes that change nothing report the region's last revision, which
        // other keys move too.
        v_ok("put k a @2 0 10; cas k x y no @7 20 30; get k a meta=1/2/2 @9 40 50");
        // Concurrent writes linearize in revision order, whatever their invoke order.
        v_ok("put k a @5 0 30; put k b @3 10 40; get k a meta=2/5/3 @5 50 60");
        // Conditions by version and by mod_revision, 0 meaning absent.
        v_ok(
            "cas k - a ok ver=0 @1 0 10; cas k - b ok ver=1 @2 20 30; cas k - c no ver=1 @2 40 50; \
             cas k - d ok modrev=2 @4 60 70; cas k - e no modrev=2 meta=3/4/1 @6 80 90; \
             del k refused ver=2 meta=3/4/1 @6 100 110; del k modrev=4 @7 120 130; \
             del k ver=0 @7 140 150; get k - @7 160 170",
        );
        // One winner among concurrent CASes by version.
        v_ok(
            "put k a @1 0 10; cas k - b ok ver=1 @2 20 50; cas k - c no ver=1 @2 20 50; \
             get k b meta=2/2/1 @2 60 70",
        );
    }

    #[test]
    fn rejects_histories_whose_versions_do_not_fit() {
        // A read reports version 3 where two writes happened.
        let v = v_illegal("put k a @1 0 10; put k b @2 20 30; get k b meta=3/2/1 @2 40 50");
        assert_eq!(v.stuck_on, vec![v.history[2].clone()]);
        let text = v.to_string();
        let read = "client 2: get() -> \"b\" (version 3, mod_revision 2, create_revision 1) \
                    at revision 2";
        assert!(text.contains(read), "{text}");
        illegal_by_versions("put k a @1 0 10; put k b @2 20 30; get k b meta=3/2/1 @2 40 50");
        // A mod_revision that is not the last write's; a create_revision from before a delete.
        illegal_by_versions("put k a @1 0 10; put k b @2 20 30; get k b meta=2/1/1 @2 40 50");
        illegal_by_versions(
            "put k a @1 0 10; del k @2 20 30; put k b @3 40 50; get k b meta=1/3/1 @3 60 70",
        );
        // Revisions that go back: a later write with a smaller one; two writes with one.
        illegal_by_versions("put k a @5 0 10; put k b @3 20 30");
        illegal_by_versions("put k a @5 0 30; put k b @5 10 40");
        // An answer that changed nothing reports a revision below the key's last change.
        illegal_by_versions("put k a @5 0 10; get k a meta=1/5/5 @4 20 30");
        illegal_by_versions("put k a @5 0 10; cas k x y no @4 20 30");
        illegal_by_versions("put k a @5 0 10; del k @6 20 30; del k @5 40 50");
        // A refused write reports versions the key does not have.
        illegal_by_versions("put k a @1 0 10; put k b @2 20 30; cas k x y no meta=1/1/1 @2 40 50");
        // Conditional writes that succeeded though their condition did not hold, or failed
        // though it did: by version, by mod_revision, "must not exist".
        v_illegal("put k a @1 0 10; cas k - b ok ver=2 @2 20 30");
        v_illegal("put k a @1 0 10; cas k - b no ver=1 @1 20 30");
        v_illegal("put k a @3 0 10; cas k - b ok modrev=2 @4 20 30");
        v_illegal("put k a @3 0 10; cas k - b no modrev=3 @3 20 30");
        v_illegal("put k a @1 0 10; cas k - b ok ver=0 @2 20 30");
        v_illegal("put k a @1 0 10; del k refused ver=1 @1 20 30");
        v_illegal("put k a @1 0 10; del k modrev=7 @2 20 30");
        // An unconditional delete is never refused; a read reports versions iff it found the key.
        v_illegal("del k refused 0 10");
        v_illegal("get k - meta=1/1/1 @1 0 10");
        v_illegal("put k a @1 0 10; get k a @1 20 30");
    }

    #[test]
    fn writes_whose_revision_nobody_heard() {
        // An indeterminate put got some revision above the last change's.
        v_ok("put k a @4 0 10; put k b 20 0 ?; get k b meta=2/9/4 @9 30 40; put k c @11 50 60");
        v_illegal("put k a @4 0 10; put k b 20 0 ?; get k b meta=2/3/4 @9 30 40");
        v_illegal("put k a @4 0 10; put k b 20 0 ?; get k b meta=1/9/4 @9 30 40");
        // Had it taken effect before the put at 5, it would have needed a revision in (4, 5).
        v_illegal("put k a @4 0 10; put k b 20 0 ?; put k c @5 30 40; get k c meta=3/5/4 @5 50 60");
        v_ok("put k a @4 0 10; put k b 20 0 ?; put k c @5 30 40; get k c meta=2/5/4 @5 50 60");
        // A condition on a mod_revision nobody heard may hold.
        v_ok("put k a 0 0 ?; cas k - b ok modrev=6 @7 10 20; get k b meta=2/7/6 @7 30 40");
        v_ok("put k a 0 0 ?; cas k - b ok modrev=6 0 0 ?; get k b meta=2/9/3 @9 30 40");
        v_ok("put k a 0 0 ?; del k modrev=6 @7 10 20; get k - @7 30 40");
        // A write whose answer gave no revision, in a key whose reads report versions.
        v_ok("put k a 0 10; get k a meta=1/3/3 @3 20 30");
        v_illegal("put k a 0 10; get k a meta=1/3/2 @3 20 30"); // version 1: created at its mod
    }

    #[test]
    fn accepts_linearizable_histories() {
        ok("");
        ok("get k - 0 5; put k a 10 20; get k a 30 40; del k 50 60; get k - 70 80");
        // Overlapping put/get: either order works; touching endpoints count as concurrent.
        ok("put k a 0 10; get k - 5 15");
        ok("put k a 0 10; get k a 5 15");
        ok("put k a 0 10; get k - 10 15");
        // Three concurrent writes observed in an order that forces one linearization.
        ok("put k a 0 99; put k b 0 99; put k c 0 99; get k b 1 2; get k c 3 4; get k a 5 6");
        // CAS: success, failure on mismatch, and one winner among concurrent CASes.
        ok("put k a 0 10; cas k a b ok 20 30; cas k a c no 40 50; cas k - d no 60 70");
        ok("cas k - x ok 0 10; get k x 20 30");
        ok("put k a 0 10; cas k a b ok 20 50; cas k a c no 20 50; get k b 60 70");
    }

    #[test]
    fn rejects_stale_reads_lost_writes_and_lost_cas() {
        let v = illegal("put k a 0 10; put k b 20 30; get k a 40 50");
        assert_eq!((v.key.as_str(), v.longest_linearized.len()), ("k", 2));
        assert_eq!(v.stuck_on, vec![v.history[2].clone()]);
        illegal("put k a 0 10; get k - 20 30"); // lost write
        illegal("put k a 0 10; put k b 20 30; get k a 35 45"); // older value
        illegal("put k a 0 99; get k a 10 20; get k - 30 40"); // reads go back in time
        illegal("put k a 0 10; cas k a b ok 20 30; cas k a c ok 40 50"); // lost CAS
        illegal("put k a 0 10; cas k a b ok 20 50; cas k a c ok 20 50");
        illegal("put k a 0 10; cas k a b no 20 30"); // must have swapped
    }

    #[test]
    fn indeterminate_failed_and_malformed() {
        ok("put k x 0 0 ?; get k x 100 110"); // observed: it took effect
        ok("put k x 0 0 ?; get k - 100 110; get k - 200 210"); // never observed
        ok("put k x 0 0 ?; put k y 10 20; get k x 30 40"); // took effect late
        illegal("put k x 0 0 ?; get k x 10 20; get k - 30 40"); // observed, then gone
        illegal("get k x 0 10; put k x 20 0 ?"); // observed before its invoke
        ok("cas k - x no 0 0 ?; get k x 10 20"); // may swap, whatever the lost reply
        ok("cas k - x ok 0 0 ?; get k - 10 20");
        ok("put k a 0 10; del k 20 0 ?; get k a 30 40; get k zzz 50 60 ?; get k - 70 80");
        // A failed put was dropped, so nobody wrote "x".
        assert_eq!(illegal("put k x 0 10 !; get k x 20 30").history.len(), 1);
        ok("put k x 0 10 !; get k - 20 30");
        let malformed = Operation {
            outcome: Outcome::Cas(true),
            ..h("put k x 0 10").remove(0)
        };
        assert!(matches!(check(&[malformed], 100), CheckResult::Illegal(_)));
    }

    #[test]
    fn multiple_keys_only_one_illegal() {
        let v = illegal("put a 1 0 9; put b 1 0 9; put c 1 0 9; get a 1 20 30; get b - 20 30");
        assert_eq!(v.key, "b");
        assert!(v.history.iter().all(|o| o.call.op.key() == "b"));
        let text = v.to_string();
        assert!(text.contains("key \"b\" is not linearizable"), "{text}");
        assert!(text.contains("[+20ns .. +30ns] client 4: get() -> <not found>"));
        assert!(text.contains("client 1: put(\"1\") -> ok"), "{text}");
        let json = serde_json::to_string(&v.history).unwrap();
        assert_eq!(
            serde_json::from_str::<Vec<VersionedOperation>>(&json).unwrap(),
            v.history
        );
    }

    /// SplitMix64: tiny deterministic PRNG for generated histories.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let z = (self.0 ^ (self.0 >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) % bound
        }
        /// A random op; "v0" stands for None where an Option is needed.
        fn op(&mut self, keys: u64, vals: u64) -> Op {
            let (key, kind) = (format!("key{}", self.below(keys)), self.below(4));
            let mut val = || format!("v{}", self.below(vals));
            match kind {
                0 => Op::Get { key },
                1 => Op::Delete { key },
                2 => Op::Put { key, value: val() },
                _ => {
                    let (expected, new) = (Some(val()).filter(|v| v != "v0"), val());
                    Op::Cas { key, expected, new }
                }
            }
        }
    }

    /// A linearizable history: each op takes effect at a random point inside its interval.
    fn random_history(seed: u64, clients: u64, per_client: usize, keys: u64) -> Vec<Operation> {
        let (mut rng, mut planned) = (Rng(seed), Vec::new());
        for client in 0..clients {
            let mut invoke = rng.below(50);
            for _ in 0..per_client {
                let (op, dur) = (rng.op(keys, 5), 1 + rng.below(100));
                let (lin, complete) = (invoke + rng.below(dur + 1), invoke + dur);
                planned.push((lin, mk(client, op, Outcome::Failed, invoke, complete)));
                invoke = complete + 1 + rng.below(30);
            }
        }
        planned.sort_by_key(|(lin, o)| (*lin, o.client));
        let mut state: HashMap<String, String> = HashMap::new();
        let mut out = Vec::new();
        for (_, mut o) in planned {
            let (fate, cur) = (rng.below(100), state.get(o.op.key()).cloned());
            o.outcome = match o.op.clone() {
                _ if fate < 3 => Outcome::Failed, // never applied
                Op::Get { .. } => Outcome::Get(cur),
                Op::Put { key, value } => {
                    state.insert(key, value);
                    Outcome::Put
                }
                Op::Delete { key } => {
                    state.remove(&key);
                    Outcome::Delete
                }
                Op::Cas { key, expected, new } => {
                    if cur == expected {
                        state.insert(key, new);
                    }
                    Outcome::Cas(cur == expected)
                }
            };
            if fate < 5 && o.outcome != Outcome::Failed {
                o.outcome = Outcome::Indeterminate; // applied, but the client never heard back
            }
            out.push(o);
        }
        out
    }

    #[test]
    fn large_random_histories() {
        for seed in 0..4 {
            let h = random_history(seed, 5, 200, 3);
            let result = check(&h, 1_000_000);
            assert_eq!(result, CheckResult::Linearizable, "seed {seed}");
            assert!(matches!(check(&h, 1), CheckResult::Unknown { .. }));
            // Corrupt the last read to a value nobody wrote: must be rejected, naming its key.
            let mut bad = h.clone();
            let is_get = |o: &Operation| matches!(o.outcome, Outcome::Get(_));
            let i = bad.iter().rposition(is_get).unwrap();
            bad[i].outcome = Outcome::Get(Some("never-written".into()));
            match check(&bad, 10_000_000) {
                CheckResult::Illegal(v) => assert_eq!(v.key, bad[i].op.key()),
                other => panic!("seed {seed}: expected Illegal, got {other:?}"),
            }
        }
    }

    /// Exhaustive reference: tries every real-time-consistent order, no pruning.
    fn brute(ops: &[Operation], placed: &mut [bool], state: Option<&str>) -> bool {
        let opt = |o: &Operation| o.outcome == Outcome::Indeterminate;
        let ret = |o: &Operation| if opt(o) { u64::MAX } else { o.complete };
        if (0..ops.len()).all(|i| placed[i] || opt(&ops[i])) {
            return true;
        }
        for x in 0..ops.len() {
            if placed[x] || (0..ops.len()).any(|y| !placed[y] && ret(&ops[y]) < ops[x].invoke) {
                continue;
            }
            let next = match (&ops[x].op, &ops[x].outcome) {
                (Op::Get { .. }, Outcome::Get(v)) if v.as_deref() == state => Some(state),
                (Op::Put { value, .. }, _) => Some(Some(value.as_str())),
                (Op::Delete { .. }, _) => Some(None),
                (Op::Cas { expected, new, .. }, out) => match (expected.as_deref() == state, out) {
                    (true, Outcome::Cas(false)) | (false, Outcome::Cas(true)) => None,
                    (swap, _) => Some(if swap { Some(new.as_str()) } else { state }),
                },
                _ => None,
            };
            if let Some(next) = next {
                placed[x] = true;
                let found = brute(ops, placed, next);
                placed[x] = false;
                if found {
                    return true;
                }
            }
        }
        false
    }

    #[test]
    fn agrees_with_brute_force_on_small_histories() {
        let (mut rng, mut verdicts) = (Rng(7), [0; 2]);
        for _ in 0..3000 {
            let mut h = Vec::new(); // ops on one key with values v0..v2 (v0 = absent in a CAS)
            for client in 0..1 + rng.below(6) {
                let (op, invoke, r) = (rng.op(1, 3), rng.below(20), rng.below(10));
                let seen = Some(format!("v{}", r % 3)).filter(|v| v != "v0");
                let outcome = match &op {
                    _ if r == 0 => Outcome::Indeterminate,
                    Op::Get { .. } => Outcome::Get(seen),
                    Op::Put { .. } => Outcome::Put,
                    Op::Delete { .. } => Outcome::Delete,
                    Op::Cas { .. } => Outcome::Cas(r % 2 == 0),
                };
                h.push(mk(client, op, outcome, invoke, invoke + rng.below(8)));
            }
            let linearizable = check(&h, u64::MAX) == CheckResult::Linearizable;
            let expected = brute(&h, &mut vec![false; h.len()], None);
            assert_eq!(linearizable, expected, "{h:#?}");
            verdicts[usize::from(linearizable)] += 1;
        }
        assert!(verdicts.iter().all(|&n| n > 500), "{verdicts:?}");
    }

    /// A linearizable history of the versioned API, as `random_history` makes one: one
    /// revision counter for every key (as one region has), CASes and deletes by value, by
    /// version or by mod_revision (the key's true one, or one off), and what each answer
    /// reports; an indeterminate call reports nothing.
    fn random_versioned_history(
        seed: u64,
        clients: u64,
        per_client: usize,
    ) -> Vec<VersionedOperation> {
        let (mut rng, mut planned) = (Rng(seed), Vec::new());
        for client in 0..clients {
            let mut invoke = rng.below(50);
            for _ in 0..per_client {
                let (op, dur) = (rng.op(3, 5), 1 + rng.below(100));
                let (lin, complete) = (invoke + rng.below(dur + 1), invoke + dur);
                let call = mk(client, op, Outcome::Failed, invoke, complete);
                planned.push((lin, VersionedOperation::from(call)));
                invoke = complete + 1 + rng.below(30);
            }
        }
        planned.sort_by_key(|(lin, v)| (*lin, v.call.client));
        let mut state: HashMap<String, (String, KeyMeta)> = HashMap::new();
        let (mut revision, mut out) = (0, Vec::new());
        for (_, mut v) in planned {
            let fate = rng.below(100);
            if fate < 3 {
                out.push(v); // never applied: Failed
                continue;
            }
            let key = v.call.op.key().to_string();
            let cur = state.get(&key).cloned();
            let meta = cur.as_ref().map(|(_, m)| *m);
            // Conditions name the key's true version or mod_revision, or one off.
            let (kind, off) = (rng.below(3), u64::from(rng.below(3) == 0));
            if matches!(v.call.op, Op::Cas { .. } | Op::Delete { .. }) && kind > 0 {
                let (version, modr) = meta.map_or((0, 0), |m| (m.version, m.mod_revision));
                v.condition = Some(match kind {
                    1 => Condition::Version(version + off),
                    _ => Condition::ModRevision(modr + off),
                });
            }
            let held = match (v.condition, &v.call.op) {
                (Some(Condition::Version(n)), _) => meta.map_or(0, |m| m.version) == n,
                (Some(Condition::ModRevision(n)), _) => meta.map_or(0, |m| m.mod_revision) == n,
                (None, Op::Cas { expected, .. }) => {
                    cur.as_ref().map(|(x, _)| x) == expected.as_ref()
                }
                (None, _) => true,
            };
            let mut put = |value: String, revision: u64| {
                let meta = match meta {
                    Some(m) => KeyMeta {
                        mod_revision: revision,
                        version: m.version + 1,
                        ..m
                    },
                    None => KeyMeta {
                        create_revision: revision,
                        mod_revision: revision,
                        version: 1,
                    },
                };
                state.insert(key.clone(), (value, meta));
            };
            let unchanged = Seen { revision, meta };
            let (outcome, seen) = match v.call.op.clone() {
                Op::Get { .. } => (Outcome::Get(cur.map(|(x, _)| x)), unchanged),
                Op::Put { value, .. } => {
                    revision += 1;
                    put(value, revision);
                    (
                        Outcome::Put,
                        Seen {
                            revision,
                            meta: None,
                        },
                    )
                }
                Op::Cas { new, .. } if held => {
                    revision += 1;
                    put(new, revision);
                    (
                        Outcome::Cas(true),
                        Seen {
                            revision,
                            meta: None,
                        },
                    )
                }
                Op::Cas { .. } => (Outcome::Cas(false), unchanged),
                Op::Delete { .. } if !held => (Outcome::Refused, unchanged),
                Op::Delete { .. } if cur.is_none() => (
                    Outcome::Delete,
                    Seen {
                        meta: None,
                        ..unchanged
                    },
                ),
                Op::Delete { .. } => {
                    revision += 1;
                    state.remove(&key);
                    (
                        Outcome::Delete,
                        Seen {
                            revision,
                            meta: None,
                        },
                    )
                }
            };
            v.call.outcome = outcome;
            v.seen = Some(seen);
            if fate < 5 {
                // Applied, but the client never heard back.
                v.call.outcome = Outcome::Indeterminate;
                v.seen = None;
            }
            out.push(v);
        }
        out
    }

    #[test]
    fn large_random_versioned_histories() {
        for seed in 0..4 {
            let h = random_versioned_history(seed, 5, 200);
            assert_eq!(
                check_versioned(&h, 1_000_000),
                CheckResult::Linearizable,
                "seed {seed}"
            );
            let conditional = h.iter().filter(|v| v.condition.is_some()).count();
            assert!(
                conditional > 50,
                "seed {seed}: {conditional} conditional writes"
            );
            let must_fail = |bad: &[VersionedOperation], i: usize, what: &str| match check_versioned(
                bad, 10_000_000,
            ) {
                CheckResult::Illegal(v) => assert_eq!(v.key, bad[i].call.op.key()),
                other => panic!("seed {seed}, {what}: expected Illegal, got {other:?}"),
            };
            // The last read that found its key reports a version no write reached.
            let mut bad = h.clone();
            let found = |v: &VersionedOperation| {
                v.seen.is_some_and(|s| s.meta.is_some())
                    && matches!(v.call.outcome, Outcome::Get(Some(_)))
            };
            let i = bad.iter().rposition(found).unwrap();
            if let Some(Seen { meta: Some(m), .. }) = &mut bad[i].seen {
                m.version = 1_000;
            }
            must_fail(&bad, i, "a version nobody wrote");
            // The last acknowledged put reports a revision that does not come after its key's
            // earlier changes.
            let mut bad = h.clone();
            let i = bad
                .iter()
                .rposition(|v| v.call.outcome == Outcome::Put)
                .unwrap();
            if let Some(s) = &mut bad[i].seen {
                s.revision = 0;
            }
            must_fail(&bad, i, "a revision that goes back");
            // The last swap that succeeded did so on a version the key never reached.
            let mut bad = h.clone();
            let i = bad
                .iter()
                .rposition(|v| v.call.outcome == Outcome::Cas(true))
                .unwrap();
            bad[i].condition = Some(Condition::Version(1_000));
            must_fail(&bad, i, "a swap on a version nobody wrote");
        }
    }

    /// Exhaustive reference over the same model ops: every real-time-consistent order.
    fn brute_model(
        model: &[(KOp, bool)],
        times: &[(u64, u64)],
        placed: &mut [bool],
        s: State,
    ) -> bool {
        let n = model.len();
        if (0..n).all(|i| placed[i] || model[i].1) {
            return true;
        }
        for x in 0..n {
            if placed[x] || (0..n).any(|y| !placed[y] && times[y].1 < times[x].0) {
                continue;
            }
            if let Some(next) = step(s, model[x].0, true) {
                placed[x] = true;
                let found = brute_model(model, times, placed, next);
                placed[x] = false;
                if found {
                    return true;
                }
            }
        }
        false
    }

    #[test]
    fn agrees_with_brute_force_on_small_versioned_histories() {
        let (mut rng, mut verdicts) = (Rng(11), [0; 2]);
        for _ in 0..3000 {
            let mut h = Vec::new(); // ops on one key, values v0..v2, revisions 1..=4
            for client in 0..1 + rng.below(6) {
                let (op, invoke, r) = (rng.op(1, 3), rng.below(20), rng.below(10));
                let mut v = VersionedOperation::from(mk(client, op, Outcome::Failed, invoke, 0));
                v.call.complete = invoke + rng.below(8);
                let revision = 1 + rng.below(4);
                let found = Some(format!("v{}", r % 3)).filter(|v| v != "v0");
                let meta = (found.is_some() || r % 2 == 0).then(|| {
                    let m = 1 + rng.below(4);
                    KeyMeta {
                        version: 1 + rng.below(2),
                        mod_revision: m,
                        create_revision: 1 + rng.below(m),
                    }
                });
                v.call.outcome = match &v.call.op {
                    _ if r == 0 => Outcome::Indeterminate,
                    Op::Get { .. } => Outcome::Get(found.clone()),
                    Op::Put { .. } => Outcome::Put,
                    Op::Delete { .. } if r % 3 == 0 => Outcome::Refused,
                    Op::Delete { .. } => Outcome::Delete,
                    Op::Cas { .. } => Outcome::Cas(r % 2 == 0),
                };
                if matches!(v.call.op, Op::Cas { .. } | Op::Delete { .. }) && r % 4 != 1 {
                    let n = rng.below(3);
                    v.condition = Some(if r % 2 == 0 {
                        Condition::Version(n)
                    } else {
                        Condition::ModRevision(n)
                    });
                }
                v.seen = (r != 0 && rng.below(4) != 0).then(|| Seen {
                    revision,
                    meta: match v.call.outcome {
                        Outcome::Get(_) => meta.filter(|_| found.is_some()),
                        _ => meta,
                    },
                });
                h.push(v);
            }
            let linearizable = check_versioned(&h, u64::MAX) == CheckResult::Linearizable;
            h.sort_by_key(|v| v.call.invoke);
            let times: Vec<(u64, u64)> = h
                .iter()
                .map(|v| match v.call.outcome {
                    Outcome::Indeterminate => (v.call.invoke, u64::MAX),
                    _ => (v.call.invoke, v.call.complete),
                })
                .collect();
            let model = to_model(&h);
            let expected = brute_model(&model, &times, &mut vec![false; h.len()], State::default());
            assert_eq!(linearizable, expected, "{h:#?}");
            verdicts[usize::from(linearizable)] += 1;
        }
        assert!(verdicts.iter().all(|&n| n > 300), "{verdicts:?}");
    }
}
