//! PD's replicated state and the [`Application`] that applies `PdCommand`s to it.
//!
//! Everything is kept in memory (small: stores and regions) and written through to RocksDB
//! records under the application prefix `p` with each apply, so a restart or a snapshot reloads
//! it. Apply depends on the log only (the TSO window uses the proposer's clock carried in the
//! command), so every replica holds the same state at the same applied index.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use prost::Message as _;
use raft::prelude::{Entry, EntryType};
use rdb_proto::pd::{pd_command::Op, ErrorCode, PdCommand, Region, Store, StoreState};
use rdb_server::raft_core::{Application, Applied, CoreError};
use rdb_storage::Engine;

const KEY_TSO: &[u8] = b"pt";
const KEY_NEXT_ID: &[u8] = b"pi";
const KEY_BOOTSTRAPPED: &[u8] = b"pb";
const PREFIX_STORE: &[u8] = b"ps";
const PREFIX_REGION: &[u8] = b"pr";

fn store_key(id: u64) -> Vec<u8> {
    [PREFIX_STORE, &id.to_be_bytes()].concat()
}

fn region_key(id: u64) -> Vec<u8> {
    [PREFIX_REGION, &id.to_be_bytes()].concat()
}

/// The replicated metadata, as of the applied index.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PdState {
    /// Upper bound (physical ms, exclusive) of every timestamp any leader may hand out.
    pub tso_limit: u64,
    /// The next id `AllocId` hands out (ids start at 1).
    pub next_id: u64,
    /// Whether `Bootstrap` ran.
    pub bootstrapped: bool,
    /// Registered stores (state UP or TOMBSTONE; DOWN is computed by the leader).
    pub stores: BTreeMap<u64, Store>,
    /// Regions by id.
    pub regions: BTreeMap<u64, Region>,
    /// Region ids by start key, to find the region holding a key.
    pub by_start: BTreeMap<Vec<u8>, u64>,
}

impl PdState {
    /// The region whose range holds `key`.
    pub fn region_for(&self, key: &[u8]) -> Option<&Region> {
        let (_, id) = self.by_start.range(..=key.to_vec()).next_back()?;
        let r = self.regions.get(id)?;
        (r.end_key.is_empty() || key < r.end_key.as_slice()).then_some(r)
    }

    /// Regions overlapping `[start, end)` (empty end: no bound), at most `limit` (0: all).
    pub fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Vec<Region> {
        let first = self
            .region_for(start)
            .map_or_else(|| start.to_vec(), |r| r.start_key.clone());
        self.by_start
            .range(first..)
            .take_while(|(k, _)| end.is_empty() || k.as_slice() < end)
            .filter_map(|(_, id)| self.regions.get(id).cloned())
            .take(if limit == 0 { usize::MAX } else { limit })
            .collect()
    }

    fn put_region(&mut self, r: Region) {
        if let Some(old) = self.regions.get(&r.id) {
            if self.by_start.get(&old.start_key) == Some(&r.id) {
                self.by_start.remove(&old.start_key);
            }
        }
        self.by_start.insert(r.start_key.clone(), r.id);
        self.regions.insert(r.id, r);
    }

    fn load(engine: &Engine) -> Result<PdState, CoreError> {
        let mut s = PdState {
            next_id: 1,
            ..Default::default()
        };
        let u64_of = |v: &[u8]| -> Result<u64, CoreError> {
            v.try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| CoreError::storage(corrupt("a PD counter is not 8 bytes")))
        };
        for (k, v) in engine.app_records(b"p").map_err(CoreError::storage)? {
            if k == KEY_TSO {
                s.tso_limit = u64_of(&v)?;
            } else if k == KEY_NEXT_ID {
                s.next_id = u64_of(&v)?;
            } else if k == KEY_BOOTSTRAPPED {
                s.bootstrapped = true;
            } else if k.starts_with(PREFIX_STORE) {
                let st = Store::decode(v.as_slice())
                    .map_err(|e| CoreError::storage(corrupt(&format!("store record: {e}"))))?;
                s.stores.insert(st.id, st);
            } else if k.starts_with(PREFIX_REGION) {
                let r = Region::decode(v.as_slice())
                    .map_err(|e| CoreError::storage(corrupt(&format!("region record: {e}"))))?;
                s.put_region(r);
            }
        }
        Ok(s)
    }
}

fn corrupt(m: &str) -> rdb_storage::Error {
    rdb_storage::Error::Corrupt(m.to_string())
}

/// What applying one `PdCommand` produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PdOutput {
    /// The TSO window now ends at `limit`; a leader whose own advance this is may serve from
    /// `base` (at or above every earlier window's end) up to `limit`, in `term`.
    TsoAdvanced {
        /// Lowest physical ms this window may serve.
        base: u64,
        /// Exclusive upper bound, physical ms.
        limit: u64,
        /// The term of the entry: only the leader of that term may serve this window.
        term: u64,
    },
    /// Ids `first ..` were allocated.
    Ids {
        /// The first id.
        first: u64,
    },
    /// The change was made.
    Done,
    /// The change was refused, deterministically (every replica refuses it).
    Refused(ErrorCode, String),
}

/// The PD state machine over a RocksDB engine.
pub struct PdApp {
    engine: Engine,
    state: Arc<RwLock<PdState>>,
}

impl PdApp {
    /// Loads the state recorded in `engine`.
    pub fn open(engine: Engine) -> Result<PdApp, CoreError> {
        let state = PdState::load(&engine)?;
        Ok(PdApp {
            engine,
            state: Arc::new(RwLock::new(state)),
        })
    }

    /// The state as applied so far, shared with the service (read it after a read barrier).
    pub fn state(&self) -> Arc<RwLock<PdState>> {
        self.state.clone()
    }
}

/// Applies one command to `s`, returning its output and the records to write.
pub fn apply_command(
    s: &mut PdState,
    cmd: PdCommand,
    term: u64,
    writes: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>,
) -> Result<PdOutput, String> {
    let op = cmd.op.ok_or("PD command without an operation")?;
    Ok(match op {
        Op::TsoAdvance(a) => {
            let base = a.now_ms.max(s.tso_limit);
            let limit = base + a.window_ms.max(1);
            s.tso_limit = limit;
            writes.push((KEY_TSO.to_vec(), Some(limit.to_be_bytes().to_vec())));
            PdOutput::TsoAdvanced { base, limit, term }
        }
        Op::AllocId(r) => {
            if r.count == 0 {
                return Err("count must be at least 1".into());
            }
            let first = s.next_id.max(1);
            s.next_id = first + u64::from(r.count);
            writes.push((KEY_NEXT_ID.to_vec(), Some(s.next_id.to_be_bytes().to_vec())));
            PdOutput::Ids { first }
        }
        Op::Bootstrap(b) => {
            if s.bootstrapped {
                return Ok(PdOutput::Refused(
                    ErrorCode::AlreadyBootstrapped,
                    "the cluster is already bootstrapped".into(),
                ));
            }
            let (Some(store), Some(region)) = (b.store, b.region) else {
                return Err("bootstrap needs a store and a region".into());
            };
            if !region.start_key.is_empty() || !region.end_key.is_empty() {
                return Err("the first region must cover every key (empty start and end)".into());
            }
            s.bootstrapped = true;
            writes.push((KEY_BOOTSTRAPPED.to_vec(), Some(vec![1])));
            put_store(s, store, writes)?;
            writes.push((region_key(region.id), Some(region.encode_to_vec())));
            s.put_region(region);
            PdOutput::Done
        }
        Op::PutStore(st) => match put_store(s, st, writes)? {
            Some(refused) => refused,
            None => PdOutput::Done,
        },
        Op::SetStoreState(r) => {
            if r.state != StoreState::Tombstone as i32 {
                return Err("only TOMBSTONE can be set".into());
            }
            let Some(st) = s.stores.get_mut(&r.store_id) else {
                return Ok(PdOutput::Refused(
                    ErrorCode::NotFound,
                    format!("no store {}", r.store_id),
                ));
            };
            st.state = StoreState::Tombstone as i32;
            writes.push((store_key(st.id), Some(st.encode_to_vec())));
            PdOutput::Done
        }
        Op::PutRegion(r) => {
            let new = r.epoch.unwrap_or_default();
            if let Some(old) = s.regions.get(&r.id) {
                let old = old.epoch.unwrap_or_default();
                if new.version < old.version || new.conf_ver < old.conf_ver {
                    return Ok(PdOutput::Refused(
                        ErrorCode::StaleEpoch,
                        format!(
                            "region {} epoch (version {}, conf_ver {}) is older than PD's \
                             (version {}, conf_ver {})",
                            r.id, new.version, new.conf_ver, old.version, old.conf_ver
                        ),
                    ));
                }
            }
            writes.push((region_key(r.id), Some(r.encode_to_vec())));
            s.put_region(r);
            PdOutput::Done
        }
    })
}

fn put_store(
    s: &mut PdState,
    mut st: Store,
    writes: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>,
) -> Result<Option<PdOutput>, String> {
    if st.id == 0 {
        return Err("store id 0 is reserved".into());
    }
    if st.address.is_empty() {
        return Err("a store needs an address".into());
    }
    if let Some(old) = s.stores.get(&st.id) {
        if old.state == StoreState::Tombstone as i32 {
            return Ok(Some(PdOutput::Refused(
                ErrorCode::InvalidArgument,
                format!("store {} is a tombstone and cannot come back", st.id),
            )));
        }
    }
    if let Some(other) = s.stores.values().find(|o| {
        o.id != st.id && o.address == st.address && o.state != StoreState::Tombstone as i32
    }) {
        return Ok(Some(PdOutput::Refused(
            ErrorCode::InvalidArgument,
            format!("address {} is already store {}", st.address, other.id),
        )));
    }
    st.state = StoreState::Up as i32;
    st.last_heartbeat_ms_ago = 0;
    writes.push((store_key(st.id), Some(st.encode_to_vec())));
    s.stores.insert(st.id, st);
    Ok(None)
}

impl Application for PdApp {
    type Output = PdOutput;

    fn applied_index(&self) -> Result<u64, CoreError> {
        Ok(self.engine.apply_state().map_err(CoreError::storage)?.index)
    }

    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Applied<PdOutput>>, CoreError> {
        let Some(last) = entries.last() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(entries.len());
        let mut writes = Vec::new();
        {
            let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
            for e in entries {
                let result = match e.get_entry_type() {
                    EntryType::EntryNormal if !e.data.is_empty() => {
                        Some(match PdCommand::decode(e.data.as_ref()) {
                            Ok(cmd) => apply_command(&mut s, cmd, e.term, &mut writes),
                            Err(err) => Err(format!(
                                "undecodable PD command at index {}: {err}",
                                e.index
                            )),
                        })
                    }
                    _ => None,
                };
                out.push(Applied {
                    index: e.index,
                    term: e.term,
                    result,
                });
            }
        }
        self.engine
            .write_app_records(&writes, (last.index, last.term))
            .map_err(CoreError::storage)?;
        Ok(out)
    }

    fn restored(&mut self) -> Result<(), CoreError> {
        let fresh = PdState::load(&self.engine)?;
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    fn apply_conf_change(
        &mut self,
        index: u64,
        term: u64,
        cc: &raft::prelude::ConfChangeV2,
        cs: &raft::prelude::ConfState,
    ) -> Result<(), CoreError> {
        self.engine
            .apply_conf_change(index, term, cc, cs)
            .map_err(CoreError::storage)
    }
}

#[cfg(test)]
mod tests {
    use rdb_proto::pd::{AllocIdRequest, BootstrapRequest, RegionEpoch, TsoAdvance};

    use super::*;

    fn run(s: &mut PdState, op: Op) -> Result<PdOutput, String> {
        apply_command(s, PdCommand { op: Some(op) }, 1, &mut Vec::new())
    }

    fn region(id: u64, start: &[u8], end: &[u8], version: u64) -> Region {
        Region {
            id,
            start_key: start.to_vec(),
            end_key: end.to_vec(),
            epoch: Some(RegionEpoch {
                version,
                conf_ver: 1,
            }),
            peers: vec![],
        }
    }

    #[test]
    fn a_tso_window_never_starts_below_the_last_one_whatever_the_proposers_clock() {
        let mut s = PdState::default();
        let adv = |now_ms| {
            Op::TsoAdvance(TsoAdvance {
                now_ms,
                window_ms: 3000,
            })
        };
        assert_eq!(
            run(&mut s, adv(10_000)),
            Ok(PdOutput::TsoAdvanced {
                base: 10_000,
                limit: 13_000,
                term: 1
            })
        );
        // A clock stepped back: the window starts at the old limit.
        assert_eq!(
            run(&mut s, adv(5_000)),
            Ok(PdOutput::TsoAdvanced {
                base: 13_000,
                limit: 16_000,
                term: 1
            })
        );
    }

    #[test]
    fn ids_never_repeat_and_a_zero_count_is_refused() {
        let mut s = PdState::default();
        let alloc = |count| Op::AllocId(AllocIdRequest { count });
        assert_eq!(run(&mut s, alloc(5)), Ok(PdOutput::Ids { first: 1 }));
        assert_eq!(run(&mut s, alloc(1)), Ok(PdOutput::Ids { first: 6 }));
        assert!(run(&mut s, alloc(0)).is_err());
    }

    #[test]
    fn regions_are_found_by_key_and_a_stale_epoch_is_refused() {
        let mut s = PdState::default();
        let boot = Op::Bootstrap(BootstrapRequest {
            store: Some(Store {
                id: 1,
                address: "a:1".into(),
                ..Default::default()
            }),
            region: Some(region(2, b"", b"", 1)),
        });
        assert_eq!(run(&mut s, boot.clone()), Ok(PdOutput::Done));
        assert!(matches!(
            run(&mut s, boot),
            Ok(PdOutput::Refused(ErrorCode::AlreadyBootstrapped, _))
        ));
        assert_eq!(s.region_for(b"zzz").map(|r| r.id), Some(2));
        // A split into [.., m) and [m, ..).
        run(&mut s, Op::PutRegion(region(2, b"", b"m", 2))).unwrap();
        run(&mut s, Op::PutRegion(region(3, b"m", b"", 2))).unwrap();
        assert_eq!(s.region_for(b"a").map(|r| r.id), Some(2));
        assert_eq!(s.region_for(b"m").map(|r| r.id), Some(3));
        assert_eq!(
            s.scan(b"b", b"", 0)
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(
            s.scan(b"", b"m", 0)
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>(),
            vec![2]
        );
        assert!(matches!(
            run(&mut s, Op::PutRegion(region(2, b"", b"", 1))),
            Ok(PdOutput::Refused(ErrorCode::StaleEpoch, _))
        ));
        assert_eq!(s.region_for(b"z").map(|r| r.id), Some(3), "nothing changed");
    }

    #[test]
    fn the_state_written_through_reloads_identically() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        engine
            .bootstrap_or_check(
                rdb_storage::Ident {
                    cluster_id: 1,
                    node_id: 1,
                },
                &[1],
                &[],
            )
            .unwrap();
        let mut app = PdApp::open(engine.clone()).unwrap();
        let cmds = [
            Op::AllocId(AllocIdRequest { count: 3 }),
            Op::Bootstrap(BootstrapRequest {
                store: Some(Store {
                    id: 1,
                    address: "a:1".into(),
                    ..Default::default()
                }),
                region: Some(region(2, b"", b"", 1)),
            }),
            Op::TsoAdvance(TsoAdvance {
                now_ms: 7,
                window_ms: 100,
            }),
        ];
        let entries: Vec<Entry> = cmds
            .into_iter()
            .enumerate()
            .map(|(i, op)| Entry {
                index: i as u64 + 1,
                term: 1,
                data: PdCommand { op: Some(op) }.encode_to_vec().into(),
                ..Default::default()
            })
            .collect();
        app.apply(&entries).unwrap();
        let live = app.state.read().unwrap().clone();
        let reloaded = PdApp::open(engine).unwrap();
        assert_eq!(*reloaded.state.read().unwrap(), live);
        assert_eq!(reloaded.applied_index().unwrap(), 3);
        assert_eq!(live.next_id, 4);
        assert_eq!(live.tso_limit, 107);
    }
}
