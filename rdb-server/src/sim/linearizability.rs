//! Linearizability checker for a per-key register model (Get/Put/Delete/CAS).
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
//! read-only steps (`Get`, `Cas` that reported `false`) are never alternatives worth
//! revisiting. If the search fails after one, it also gives up on the configuration
//! the read-only step was taken from.
//!
//! `Failed` operations and indeterminate `Get`s are dropped. Indeterminate writes
//! get a return time of +infinity and are optional: the search stops with success
//! as soon as every non-optional operation is linearized. An indeterminate CAS
//! takes effect iff its precondition holds at its linearization point.
//!
//! What it does not do: it does not check operations that span several keys
//! (transactions, scans); it has no model of session guarantees weaker than
//! linearizability; and an `Unknown` result carries no partial counter-example.
//! An operation whose outcome does not match its kind (e.g. a `Put` with
//! `Outcome::Cas(_)`) can never be linearized, so it makes the key `Illegal`.

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
    /// Delete was acknowledged.
    Delete,
    /// Cas returned whether it swapped.
    Cas(bool),
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
    pub history: Vec<Operation>,
    /// The longest prefix of operations (in linearization order) the search managed to place.
    pub longest_linearized: Vec<Operation>,
    /// Operations that could not be placed after that prefix (the ones that were candidates at that point).
    pub stuck_on: Vec<Operation>,
}

fn fmt_ns(ns: u64) -> String {
    match ns {
        0..=999 => format!("{ns}ns"),
        1_000..=999_999 => format!("{:.1}us", ns as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.3}ms", ns as f64 / 1e6),
        _ => format!("{:.3}s", ns as f64 / 1e9),
    }
}

fn describe(o: &Operation, t0: u64) -> String {
    let t = |ns: u64| fmt_ns(ns.saturating_sub(t0));
    let end = match o.outcome {
        Outcome::Indeterminate => "?".to_string(),
        _ => format!("+{}", t(o.complete)),
    };
    let call = match &o.op {
        Op::Get { .. } => "get()".to_string(),
        Op::Put { value, .. } => format!("put({value:?})"),
        Op::Delete { .. } => "delete()".to_string(),
        Op::Cas { expected, new, .. } => {
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
        Outcome::Failed => "failed".to_string(),
        Outcome::Indeterminate => "indeterminate".to_string(),
    };
    let (start, client) = (t(o.invoke), o.client);
    format!("[+{start} .. {end}] client {client}: {call} -> {result}")
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t0 = self.history.iter().map(|o| o.invoke).min().unwrap_or(0);
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

/// Model operation on one key, with values interned to small integers.
#[derive(Debug, Clone, Copy)]
enum KOp {
    Get(Option<u32>),
    Put(u32),
    Delete,
    /// (expected, new, swapped); `swapped` is None when the outcome is indeterminate.
    Cas(Option<u32>, u32, Option<bool>),
    /// Outcome does not match the operation kind: never linearizable.
    Malformed,
}

type State = Option<u32>;

impl KOp {
    /// Legal only where it leaves the state unchanged. Such an op, once it is a candidate,
    /// can be moved to the front of any valid continuation, so it is tried greedily: if
    /// the search fails after it, the configuration it was placed in fails too.
    fn is_read_only(self) -> bool {
        matches!(self, KOp::Get(_) | KOp::Cas(_, _, Some(false)))
    }
}

fn step(state: State, op: KOp) -> Option<State> {
    match op {
        KOp::Get(v) => (v == state).then_some(state),
        KOp::Put(v) => Some(Some(v)),
        KOp::Delete => Some(None),
        KOp::Cas(expected, new, swapped) => {
            let hit = state == expected;
            (swapped.unwrap_or(hit) == hit).then_some(if hit { Some(new) } else { state })
        }
        KOp::Malformed => None,
    }
}

fn intern<'a>(ids: &mut HashMap<&'a str, u32>, s: &'a str) -> u32 {
    let next = ids.len() as u32;
    *ids.entry(s).or_insert(next)
}

/// Builds the model ops for one key's already-filtered operations; the bool is "optional".
fn to_model(ops: &[Operation]) -> Vec<(KOp, bool)> {
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let mut model = Vec::with_capacity(ops.len());
    for o in ops {
        let indet = o.outcome == Outcome::Indeterminate;
        let kop = match (&o.op, &o.outcome) {
            (Op::Get { .. }, Outcome::Get(v)) => {
                KOp::Get(v.as_deref().map(|v| intern(&mut ids, v)))
            }
            (Op::Put { value, .. }, Outcome::Put) => KOp::Put(intern(&mut ids, value)),
            (Op::Put { value, .. }, _) if indet => KOp::Put(intern(&mut ids, value)),
            (Op::Delete { .. }, Outcome::Delete) => KOp::Delete,
            (Op::Delete { .. }, _) if indet => KOp::Delete,
            (Op::Cas { expected, new, .. }, Outcome::Cas(_) | Outcome::Indeterminate) => {
                let expected = expected.as_deref().map(|e| intern(&mut ids, e));
                let swapped = (!indet).then(|| o.outcome == Outcome::Cas(true));
                KOp::Cas(expected, intern(&mut ids, new), swapped)
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

/// Wing & Gong / Lowe search over one key's sub-history.
fn check_key(model: &[(KOp, bool)], times: &[(u64, u64)], budget: u64) -> KeyVerdict {
    let mut ev = Events::new(times);
    let mut remaining = model.iter().filter(|(_, optional)| !optional).count();
    let mut state: State = None;
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
            if let Some(new_state) = step(state, model[i].0) {
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
    let mut by_key: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    for o in history {
        match (&o.op, &o.outcome) {
            (_, Outcome::Failed) | (Op::Get { .. }, Outcome::Indeterminate) => {}
            _ => by_key.entry(o.op.key()).or_default().push(o.clone()),
        }
    }
    let mut unknown: Option<String> = None;
    for (key, mut ops) in by_key {
        ops.sort_by_key(|o| o.invoke); // stable: ties keep input order
        let times: Vec<(u64, u64)> = ops
            .iter()
            .map(|o| match o.outcome {
                Outcome::Indeterminate => (o.invoke, u64::MAX),
                _ => (o.invoke, o.complete.max(o.invoke)),
            })
            .collect();
        match check_key(&to_model(&ops), &times, step_budget) {
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
        assert!(v.history.iter().all(|o| o.op.key() == "b"));
        let text = v.to_string();
        assert!(text.contains("key \"b\" is not linearizable"), "{text}");
        assert!(text.contains("[+20ns .. +30ns] client 4: get() -> <not found>"));
        assert!(text.contains("client 1: put(\"1\") -> ok"), "{text}");
        let json = serde_json::to_string(&v.history).unwrap();
        assert_eq!(
            serde_json::from_str::<Vec<Operation>>(&json).unwrap(),
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
}
