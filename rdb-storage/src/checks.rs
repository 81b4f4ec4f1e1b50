//! Who a data directory belongs to and whether it may be used: its kind of process and
//! identity, the apply settings it was created with, the agreement of its two applied indexes,
//! and the durable index recorded beside it (a database behind it was rolled back). Each check
//! refuses with a cause and never rewrites or "repairs" what it finds (a directory of an older
//! format is upgraded, see [`crate::upgrade`], which is not a repair).

use protobuf::Message as _;
use raft::prelude::{ConfState, HardState};
use rocksdb::{IteratorMode, WriteBatch};

use crate::engine::{
    ApplySettings, ApplyState, DirKind, Engine, Ident, APPLY_SETTINGS_V1, APPLY_SETTINGS_V2,
    APPLY_SETTINGS_V3, DURABLE_INDEX_FILE,
};
use crate::keys::{self, CF_DATA, CF_RAFT_LOG, CF_RAFT_STATE};
use crate::region::StoreIdent;
use crate::{Error, Index, Result};

impl Engine {
    /// Records that this directory belongs to a process of `kind`, or checks that it does:
    /// refuses a directory of another kind. A directory written before kinds were recorded
    /// takes the kind of the first process that opens it now (a store's is told by its
    /// identity record).
    pub fn claim_kind(&self, kind: DirKind) -> Result<()> {
        let state = self.cf(CF_RAFT_STATE);
        let found = match self.db().get_cf(state, keys::KIND_KEY)? {
            Some(v) => Some(
                DirKind::from_code(&v)
                    .ok_or_else(|| Error::Corrupt("unknown data directory kind".into()))?,
            ),
            // Before kinds were recorded, a store's identity had cluster id 0.
            None => match self.ident()? {
                Some(i) if i.cluster_id == 0 => Some(DirKind::Store),
                _ => None,
            },
        };
        match found {
            Some(found) if found != kind => Err(Error::WrongKind {
                found: found.describe(),
                wanted: kind.describe(),
            }),
            _ => {
                if self.db().get_cf(state, keys::KIND_KEY)?.is_none() {
                    let mut wb = WriteBatch::default();
                    wb.put_cf(state, keys::KIND_KEY, kind.code());
                    self.write(wb, true)?;
                }
                Ok(())
            }
        }
    }

    /// The identity stored in this directory, or `None` for a fresh one.
    pub fn ident(&self) -> Result<Option<Ident>> {
        match self.db().get_cf(self.cf(CF_RAFT_STATE), keys::IDENT_KEY)? {
            None => Ok(None),
            Some(v) => {
                let (cluster_id, node_id) = keys::decode_pair(&v)
                    .ok_or_else(|| Error::Corrupt("identity record is not 16 bytes".into()))?;
                Ok(Some(Ident {
                    cluster_id,
                    node_id,
                }))
            }
        }
    }

    /// Claims a fresh directory for `ident` with the initial membership (`voters`, and the
    /// addresses in `members`), or checks that an existing one belongs to `ident`. Never
    /// rewrites existing data: once a directory exists, its stored membership (changed through
    /// the log) wins over whatever the caller configured. A node joining a running cluster
    /// passes no voters: its membership arrives with the leader's snapshot.
    pub fn bootstrap_or_check(
        &self,
        ident: Ident,
        voters: &[u64],
        members: &[crate::MemberRecord],
    ) -> Result<()> {
        let mut configured = voters.to_vec();
        configured.sort_unstable();
        match self.ident()? {
            Some(found) if found != ident => Err(Error::WrongIdentity {
                found_cluster: found.cluster_id,
                found_node: found.node_id,
                cluster: ident.cluster_id,
                node: ident.node_id,
            }),
            Some(_) => {
                self.conf_state()?.ok_or_else(|| {
                    Error::Corrupt("identity present but conf state missing".into())
                })?;
                Ok(())
            }
            None => {
                if self.has_any_state()? {
                    return Err(Error::Corrupt(
                        "raft state present but identity record missing".into(),
                    ));
                }
                let cs = ConfState {
                    voters: configured,
                    ..Default::default()
                };
                let mut batch = WriteBatch::default();
                let state = self.cf(CF_RAFT_STATE);
                batch.put_cf(
                    state,
                    self.state_key(keys::CONF_STATE_KEY),
                    cs.write_to_bytes()?,
                );
                batch.put_cf(
                    state,
                    self.state_key(keys::INITIAL_CONF_STATE_KEY),
                    cs.write_to_bytes()?,
                );
                for m in members {
                    batch.put_cf(
                        self.cf(CF_DATA),
                        keys::member_key(m.id),
                        prost::Message::encode_to_vec(m),
                    );
                }
                batch.put_cf(
                    state,
                    self.state_key(keys::HARD_STATE_KEY),
                    HardState::default().write_to_bytes()?,
                );
                batch.put_cf(
                    state,
                    self.state_key(keys::APPLY_STATE_KEY),
                    keys::encode_pair(0, 0),
                );
                batch.put_cf(
                    self.cf(CF_DATA),
                    self.space().data_apply_key(),
                    keys::encode_pair(0, 0),
                );
                batch.put_cf(
                    state,
                    self.state_key(keys::TRUNCATED_STATE_KEY),
                    keys::encode_pair(0, 0),
                );
                // Identity last in the batch, but the batch is atomic anyway.
                batch.put_cf(
                    state,
                    keys::IDENT_KEY,
                    keys::encode_pair(ident.cluster_id, ident.node_id),
                );
                self.write(batch, true)
            }
        }
    }

    /// Fixes the apply-affecting settings of a directory the first time it is used with them,
    /// and refuses a configuration that differs from what is stored. A directory of the format
    /// before versioned keys is upgraded first ([`crate::upgrade`]).
    ///
    /// Only the retention setting `revisions` uses is checked: a config-file node keeps history
    /// by count, a PD-mode store by time, and a change to the other one changes nothing.
    ///
    /// Returns true when the settings were recorded now (a new or upgraded directory).
    pub fn check_apply_settings(
        &self,
        configured: ApplySettings,
        revisions: crate::Revisions,
    ) -> Result<bool> {
        match self.apply_settings_record()? {
            Some((version @ (APPLY_SETTINGS_V2 | APPLY_SETTINGS_V3), stored)) => {
                let mut compare =
                    vec![("dedup_window", stored.dedup_window, configured.dedup_window)];
                match revisions {
                    crate::Revisions::Counted => compare.push((
                        "history_revisions",
                        stored.history_revisions,
                        configured.history_revisions,
                    )),
                    crate::Revisions::Stamped if version == APPLY_SETTINGS_V3 => {
                        compare.push(("history_ms", stored.history_ms, configured.history_ms))
                    }
                    crate::Revisions::Stamped => {}
                }
                for (name, stored, configured) in compare {
                    if stored != configured {
                        return Err(Error::SettingChanged {
                            name,
                            stored,
                            configured,
                        });
                    }
                }
                if version == APPLY_SETTINGS_V2 {
                    // Written before writes carried PD timestamps (none of its writes did): it
                    // takes the history kept in time from the configuration, for good.
                    let mut batch = rocksdb::WriteBatch::default();
                    batch.put_cf(
                        self.cf(CF_RAFT_STATE),
                        keys::APPLY_SETTINGS_KEY,
                        crate::engine::encode_apply_settings(configured),
                    );
                    self.write(batch, true)?;
                }
                Ok(false)
            }
            Some((APPLY_SETTINGS_V1, stored)) => {
                if stored.dedup_window != configured.dedup_window {
                    return Err(Error::SettingChanged {
                        name: "dedup_window",
                        stored: stored.dedup_window,
                        configured: configured.dedup_window,
                    });
                }
                self.upgrade_to_versions(configured)?;
                Ok(true)
            }
            Some((version, _)) => Err(Error::Corrupt(format!(
                "apply settings record has unknown version {version}"
            ))),
            // A new directory, or one written before settings were recorded (with bare values
            // if it holds data: the upgrade finds none in a new one).
            None => {
                self.upgrade_to_versions(configured)?;
                Ok(true)
            }
        }
    }

    /// The apply settings this directory records, with the record's version (None: none yet).
    pub fn apply_settings(&self) -> Result<Option<ApplySettings>> {
        Ok(self.apply_settings_record()?.map(|(_, s)| s))
    }

    /// The stored apply settings record: its version and the settings (a version 1 record
    /// has no history setting: the default then).
    fn apply_settings_record(&self) -> Result<Option<(u64, ApplySettings)>> {
        let Some(v) = self
            .db()
            .get_cf(self.cf(CF_RAFT_STATE), keys::APPLY_SETTINGS_KEY)?
        else {
            return Ok(None);
        };
        let field = |i: usize| {
            v.get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| Error::Corrupt("apply settings record too short".into()))
        };
        let version = field(0)?;
        let history_revisions = if version >= APPLY_SETTINGS_V2 {
            field(2)?
        } else {
            crate::engine::DEFAULT_HISTORY_REVISIONS
        };
        let history_ms = if version >= APPLY_SETTINGS_V3 {
            field(3)?
        } else {
            crate::engine::DEFAULT_HISTORY_MS
        };
        Ok(Some((
            version,
            ApplySettings {
                dedup_window: field(1)?,
                history_revisions,
                history_ms,
            },
        )))
    }

    /// Checks that the user data and the Raft state describe the same applied index. They are
    /// written in one batch, so they can only differ after damage below RocksDB (a lost or cut
    /// MANIFEST, media errors): serving such data would make this replica differ from the others
    /// for good, so the node must refuse to start.
    pub fn check_consistency(&self) -> Result<()> {
        let state = self.apply_state()?;
        let data = match self
            .db()
            .get_cf(self.cf(CF_DATA), self.space().data_apply_key())?
        {
            Some(v) => {
                let (index, term) = keys::decode_pair(&v).ok_or_else(|| {
                    Error::Corrupt("apply record in the data column family is not 16 bytes".into())
                })?;
                ApplyState { index, term }
            }
            None if state.index == 0 => return Ok(()),
            None => ApplyState::default(),
        };
        if data != state {
            return Err(Error::Diverged {
                data_index: data.index,
                state_index: state.index,
            });
        }
        Ok(())
    }

    /// Records, outside RocksDB, that the log of this node reached `index` durably (an index
    /// whose entry was synced: an applied or committed one). Written to a file of its own with
    /// rename and fsync, off the Raft thread, every few seconds. If RocksDB ever opens an older
    /// state whose log ends below it (a MANIFEST cut past several flushes rolls every column
    /// family back together, which RocksDB's own checks cannot see), `check_durable_index`
    /// refuses to start.
    pub fn record_durable_index(&self, index: Index) -> Result<()> {
        self.write_beside(DURABLE_INDEX_FILE, &format!("{index}\n"))
    }

    /// Refuses a log that ends below the index recorded by `record_durable_index`.
    pub fn check_durable_index(&self, log_end: Index) -> Result<()> {
        let Some(text) = self.read_beside(DURABLE_INDEX_FILE)? else {
            return Ok(());
        };
        let recorded: Index = text.trim().parse().map_err(|_| {
            Error::Corrupt(format!(
                "{} does not hold an index",
                self.db().path().join(DURABLE_INDEX_FILE).display()
            ))
        })?;
        if log_end < recorded {
            return Err(Error::RolledBack { log_end, recorded });
        }
        Ok(())
    }

    /// Replaces the file `name` beside the database with `text`, durably: written to a
    /// temporary file, synced, renamed over the old one, and the directory synced.
    pub(crate) fn write_beside(&self, name: &str, text: &str) -> Result<()> {
        let dir = self.db().path();
        let tmp = dir.join(format!("{name}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    }

    /// The text of the file `name` beside the database (see [`Engine::write_beside`]), if
    /// there is one.
    pub(crate) fn read_beside(&self, name: &str) -> Result<Option<String>> {
        match std::fs::read_to_string(self.db().path().join(name)) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn has_any_state(&self) -> Result<bool> {
        for cf in [CF_RAFT_STATE, CF_RAFT_LOG, CF_DATA] {
            for item in self.db().iterator_cf(self.cf(cf), IteratorMode::Start) {
                let (k, _) = item?;
                // Which kind of process owns the directory is recorded before anything else.
                if !(cf == CF_RAFT_STATE && &*k == keys::KIND_KEY) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Claims a fresh directory for the store `want`, or checks that an existing one is that
    /// store's: refuses the directory of another kind of process, of another store, or of a
    /// store of another PD cluster. A directory written before stores recorded their cluster
    /// and token takes `want`'s.
    pub fn claim_for_store(&self, want: StoreIdent) -> Result<()> {
        self.claim_kind(crate::DirKind::Store)?;
        match self.store_ident()? {
            Some(found) if found == want => Ok(()),
            Some(found) if found.store_id != want.store_id => Err(Error::WrongStore(format!(
                "this data directory belongs to store {}, not store {}",
                found.store_id, want.store_id
            ))),
            Some(found) if found.cluster_id != 0 && found.cluster_id != want.cluster_id => {
                Err(Error::WrongStore(format!(
                    "this data directory belongs to a store of cluster {}, not of cluster {}",
                    found.cluster_id, want.cluster_id
                )))
            }
            Some(found) if found.token != 0 && found.token != want.token => Err(Error::WrongStore(
                "this data directory holds another store token".into(),
            )),
            _ => {
                let mut wb = WriteBatch::default();
                let state = self.cf(CF_RAFT_STATE);
                wb.put_cf(
                    state,
                    keys::IDENT_KEY,
                    keys::encode_pair(want.cluster_id, want.store_id),
                );
                wb.put_cf(state, keys::STORE_TOKEN_KEY, want.token.to_be_bytes());
                self.write(wb, true)
            }
        }
    }

    /// Claims a fresh directory for node `want` of a config-file cluster (a store that hosts
    /// region 1 with no PD), or checks that an existing one is that node's. Returns whether
    /// the directory was fresh. Refuses another kind of process's directory, another node's or
    /// cluster's, and the layout of older versions ([`Error::OldLayout`]), which kept the
    /// node's group outside region 1: never rewritten, so nothing is lost.
    pub fn claim_for_node(&self, want: Ident) -> Result<bool> {
        self.claim_kind(crate::DirKind::Node)?;
        let root_group = self
            .db()
            .get_cf(self.cf(CF_RAFT_STATE), keys::CONF_STATE_KEY)?
            .is_some();
        if root_group {
            return Err(Error::OldLayout);
        }
        match self.ident()? {
            Some(found) if found == want => Ok(false),
            Some(found) => Err(Error::WrongIdentity {
                found_cluster: found.cluster_id,
                found_node: found.node_id,
                cluster: want.cluster_id,
                node: want.node_id,
            }),
            None => {
                let mut wb = WriteBatch::default();
                wb.put_cf(
                    self.cf(CF_RAFT_STATE),
                    keys::IDENT_KEY,
                    keys::encode_pair(want.cluster_id, want.node_id),
                );
                self.write(wb, true)?;
                Ok(true)
            }
        }
    }

    /// The identity of the store this directory was claimed for, if it was (see
    /// [`Engine::claim_for_store`]); `None` for a fresh directory.
    pub fn store_ident(&self) -> Result<Option<StoreIdent>> {
        let Some(ident) = self.ident()? else {
            return Ok(None);
        };
        let token = match self
            .db()
            .get_cf(self.cf(CF_RAFT_STATE), keys::STORE_TOKEN_KEY)?
        {
            None => 0,
            Some(v) => u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| Error::Corrupt("store token record is not 8 bytes".into()))?,
            ),
        };
        Ok(Some(StoreIdent {
            cluster_id: ident.cluster_id,
            store_id: ident.node_id,
            token,
        }))
    }
}
