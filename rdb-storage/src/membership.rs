//! Membership records: who is in the group, at which addresses, beside the conf state.
//!
//! raft-rs's `ConfState` says which ids vote and which learn; the addresses live in the data
//! column family under [`keys::MEMBER_PREFIX`] + id (a [`MemberRecord`]), so snapshots carry
//! them and every replica holds the same bytes. A conf change entry's context
//! ([`MemberContext`]) names the addresses of the nodes it adds; applying it writes the new conf
//! state, the records and the applied index in one batch, so a crash keeps all or none of them.
//! A removed member keeps a record with `removed` set: its id is never accepted again.

use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{ConfChangeType, ConfChangeV2, ConfState};
use rdb_proto::command::{MemberContext, MemberRecord};
use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::engine::Engine;
use crate::keys::{self, CF_DATA, CF_RAFT_STATE};
use crate::{Error, Index, Result, Term};

pub use crate::keys::member_key;

/// The records a conf change leaves: each added node's addresses (from the entry's context),
/// and a `removed` record for each removed node. Deterministic in the entry alone.
pub fn records_of_change(cc: &ConfChangeV2) -> Result<Vec<MemberRecord>> {
    let ctx = if cc.context.is_empty() {
        MemberContext::default()
    } else {
        MemberContext::decode(cc.context.as_ref())
            .map_err(|e| Error::Corrupt(format!("undecodable member context: {e}")))?
    };
    let mut out = Vec::new();
    for c in &cc.changes {
        match c.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                if let Some(r) = ctx.added.iter().find(|r| r.id == c.node_id) {
                    out.push(r.clone());
                }
            }
            ConfChangeType::RemoveNode => out.push(MemberRecord {
                id: c.node_id,
                removed: true,
                ..Default::default()
            }),
        }
    }
    Ok(out)
}

impl Engine {
    /// Every member record (current and removed), by id: a node's group keeps them under
    /// [`keys::MEMBER_PREFIX`], a region under its own prefix ([`keys::region_member_key`]).
    pub fn members(&self) -> Result<Vec<MemberRecord>> {
        let prefix = self.member_prefix();
        let end = keys::prefix_end(&prefix);
        self.guarded(&prefix, &end, || {
            let mut out = Vec::new();
            let mut ro = rocksdb::ReadOptions::default();
            ro.set_iterate_upper_bound(end.clone());
            let it = self.db().iterator_cf_opt(
                self.cf(CF_DATA),
                ro,
                IteratorMode::From(&prefix, Direction::Forward),
            );
            for item in it {
                let (_, v) = item?;
                let r = MemberRecord::decode(v.as_ref())
                    .map_err(|e| Error::Corrupt(format!("undecodable member record: {e}")))?;
                out.push(r);
            }
            Ok(out)
        })
    }

    /// Where this group's member records start in `data`.
    fn member_prefix(&self) -> Vec<u8> {
        match self.space() {
            keys::Space::Node => vec![keys::MEMBER_PREFIX],
            keys::Space::Region(id) => {
                let mut p = keys::region_prefix(id);
                p.push(keys::REGION_MEMBER_SUFFIX);
                p
            }
        }
    }

    /// The key of member `id`'s record in this group.
    pub(crate) fn member_record_key(&self, id: u64) -> Vec<u8> {
        match self.space() {
            keys::Space::Node => member_key(id).to_vec(),
            keys::Space::Region(region) => keys::region_member_key(region, id),
        }
    }

    /// Records an applied conf change: the new conf state, who the members are and the
    /// applied index, in one unsynced batch (the log can replay it, as any apply batch). A
    /// node's group keeps a record per member it changes; a region's members are named by its
    /// meta, rewritten with its new peers and `conf_ver` ([`crate::region::with_conf_change`]),
    /// and a region that knows its members' addresses (a config-file cluster's) also keeps
    /// the records that carry addresses or a removal.
    pub fn write_conf_change(
        &self,
        cs: &ConfState,
        records: &[MemberRecord],
        applied: (Index, Term),
    ) -> Result<()> {
        let mut wb = WriteBatch::default();
        let data = self.cf(CF_DATA);
        let state = self.cf(CF_RAFT_STATE);
        match self.space() {
            keys::Space::Region(id) => {
                let meta = self
                    .region_meta()?
                    .ok_or_else(|| Error::Corrupt(format!("region {id} has no meta record")))?;
                let added: Vec<(u64, u64)> = records
                    .iter()
                    .filter(|r| !r.removed)
                    .map(|r| (r.id, r.store_id))
                    .collect();
                let meta = crate::region::with_conf_change(&meta, cs, &added);
                wb.put_cf(data, keys::region_meta_key(id), meta.encode_to_vec());
                for r in records
                    .iter()
                    .filter(|r| r.removed || !r.peer_addr.is_empty())
                {
                    wb.put_cf(data, self.member_record_key(r.id), r.encode_to_vec());
                }
            }
            keys::Space::Node => {
                for r in records {
                    wb.put_cf(data, member_key(r.id), r.encode_to_vec());
                }
            }
        }
        wb.put_cf(
            state,
            self.state_key(keys::CONF_STATE_KEY),
            cs.write_to_bytes()?,
        );
        let pair = keys::encode_pair(applied.0, applied.1);
        wb.put_cf(state, self.state_key(keys::APPLY_STATE_KEY), pair);
        wb.put_cf(data, self.space().data_apply_key(), pair);
        fail::fail_point!("storage-conf-change", |arg| Err(Error::injected(
            "storage-conf-change",
            arg
        )));
        self.write(wb, false)
    }

    /// Applies the membership change entry at (`index`, `term`): the conf state raft-rs switched
    /// to, and the members `cc` adds (addresses or stores from its context) or removes.
    pub fn apply_conf_change(
        &self,
        index: Index,
        term: Term,
        cc: &ConfChangeV2,
        cs: &ConfState,
    ) -> Result<()> {
        let records = records_of_change(cc)?;
        self.write_conf_change(cs, &records, (index, term))
    }

    /// Marks this directory's node as removed from its cluster (synced): it must never serve
    /// again, even if it restarts before hearing so from the others.
    pub fn mark_removed(&self, at_index: Index) -> Result<()> {
        let mut wb = WriteBatch::default();
        wb.put_cf(
            self.cf(CF_RAFT_STATE),
            self.state_key(keys::REMOVED_KEY),
            at_index.to_be_bytes(),
        );
        self.write(wb, true)
    }

    /// `Some(index)` if this node was removed from its cluster (see [`Engine::mark_removed`]).
    pub fn removed(&self) -> Result<Option<Index>> {
        match self
            .db()
            .get_cf(self.cf(CF_RAFT_STATE), self.state_key(keys::REMOVED_KEY))?
        {
            None => Ok(None),
            Some(v) => Ok(Some(Index::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| Error::Corrupt("removed marker is not 8 bytes".into()))?,
            ))),
        }
    }

    /// The voters the group started with, which have the log from index 1 without a snapshot
    /// (see [`crate::RaftStorage`]): recorded at bootstrap; for directories made before it was
    /// recorded, the conf state's voters (membership was fixed then).
    pub fn initial_voters(&self) -> Result<Vec<u64>> {
        match self.db().get_cf(
            self.cf(CF_RAFT_STATE),
            self.state_key(keys::INITIAL_CONF_STATE_KEY),
        )? {
            Some(v) => Ok(ConfState::parse_from_bytes(&v)?.voters),
            None => Ok(self.conf_state()?.map(|cs| cs.voters).unwrap_or_default()),
        }
    }
}
