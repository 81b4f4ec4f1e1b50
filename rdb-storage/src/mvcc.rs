//! Versioned keys (specs/018-versions, its data model): the newest version of a key in its
//! `d` record, with its revisions in front of the value, and older versions in `h` records
//! keyed by user key and revision, newest first. A write moves the version it supersedes into
//! history in the same batch; a read at a revision takes the newest record at or below it;
//! compaction deletes the history no read at or above its horizon can need.
//!
//! The write path works on [`Records`] (an apply batch, or memory in the simulation), so it is
//! the very logic the state machine applies with; reads and compaction work on the engine.
//! Reads for clients go through one RocksDB view: the group's revisions and the data, so the
//! revision a read answers with fits what it read.

use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};

use crate::keys::{self, Space, CF_DATA, HISTORY_PREFIX};
use crate::state_machine::Records;
use crate::{Engine, Error, Result};

/// First byte of a version record: a value with its revisions.
const VERSION: u8 = 1;
/// First byte of a history record that marks a delete.
const DELETED: u8 = 2;

/// What a key carries beside its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    /// The revision that created the key (since its last delete).
    pub create_revision: u64,
    /// The revision of its last change.
    pub mod_revision: u64,
    /// 1 at creation, +1 per change; a delete ends it.
    pub version: u64,
}

/// One version of a key: its revisions and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The revisions.
    pub meta: Meta,
    /// The value.
    pub value: Vec<u8>,
}

/// A change to one key at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Set the value.
    Put(Vec<u8>),
    /// Remove the key.
    Delete,
}

/// A history record: the user key, the revision, the record.
type HistoryRecord = (Vec<u8>, u64, Vec<u8>);

/// What a write did to a key: its meta before and after (None: absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Before the write.
    pub before: Option<Meta>,
    /// After it.
    pub after: Option<Meta>,
}

/// A group's revisions, kept in its records beside its applied index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Revisions {
    /// The last revision a write got (0: none yet).
    pub last: u64,
    /// Reads below this revision are refused: their history may be gone.
    pub compacted: u64,
}

/// The revisions of the group whose records `r` holds (zeros before its first write).
pub fn revisions<R: Records + ?Sized>(r: &R) -> Result<Revisions> {
    decode_revisions(r.read(&r.space().revisions_key())?.as_deref())
}

/// A revisions record's contents (None: the group has none yet, zeros).
pub fn decode_revisions(record: Option<&[u8]>) -> Result<Revisions> {
    let Some(v) = record else {
        return Ok(Revisions::default());
    };
    let field = |at: usize| {
        v.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| Error::Corrupt("revisions record too short".into()))
    };
    Ok(Revisions {
        last: field(0)?,
        compacted: field(8)?,
    })
}

/// The revisions record's contents.
pub fn encode_revisions(revs: Revisions) -> Vec<u8> {
    let mut v = revs.last.to_be_bytes().to_vec();
    v.extend_from_slice(&revs.compacted.to_be_bytes());
    v
}

/// Records the group's revisions (in the same batch as the writes they count).
pub fn set_revisions<R: Records + ?Sized>(r: &mut R, revs: Revisions) {
    let key = r.space().revisions_key();
    r.put(key, encode_revisions(revs));
}

/// A version record: its first byte, the three revisions as varints, the value.
pub fn encode(meta: &Meta, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 3 * 10 + value.len());
    out.push(VERSION);
    for v in [meta.create_revision, meta.mod_revision, meta.version] {
        prost::encoding::encode_varint(v, &mut out);
    }
    out.extend_from_slice(value);
    out
}

/// The meta and value of a version record.
pub fn decode(record: &[u8]) -> Result<(Meta, &[u8])> {
    let corrupt = || Error::Corrupt("undecodable version record".into());
    let (&first, mut rest) = record.split_first().ok_or_else(corrupt)?;
    if first != VERSION {
        return Err(corrupt());
    }
    let mut next = || prost::encoding::decode_varint(&mut rest).map_err(|_| corrupt());
    let meta = Meta {
        create_revision: next()?,
        mod_revision: next()?,
        version: next()?,
    };
    Ok((meta, rest))
}

/// The memcomparable encoding of a user key: order-preserving, and no key's encoding is a
/// prefix of another's.
fn encode_key(key: &[u8]) -> Result<Vec<u8>> {
    memcomparable::to_vec(&serde_bytes::Bytes::new(key))
        .map_err(|e| Error::Corrupt(format!("key encoding: {e}")))
}

/// The prefix of every history record of `key`.
fn history_prefix(key: &[u8]) -> Result<Vec<u8>> {
    let mut k = vec![HISTORY_PREFIX];
    k.extend(encode_key(key)?);
    Ok(k)
}

/// The history record of `key` at `revision`.
pub fn history_key(key: &[u8], revision: u64) -> Result<Vec<u8>> {
    let mut k = history_prefix(key)?;
    k.extend_from_slice(&(!revision).to_be_bytes());
    Ok(k)
}

/// The user key and revision of a history record's key.
fn parse_history_key(k: &[u8]) -> Result<(Vec<u8>, u64)> {
    let corrupt = || Error::Corrupt("undecodable history key".into());
    let body = k.strip_prefix(&[HISTORY_PREFIX]).ok_or_else(corrupt)?;
    let split = body.len().checked_sub(8).ok_or_else(corrupt)?;
    let (enc, rev) = body.split_at(split);
    let key: serde_bytes::ByteBuf = memcomparable::from_slice(enc).map_err(|_| corrupt())?;
    let rev = u64::from_be_bytes(rev.try_into().map_err(|_| corrupt())?);
    Ok((key.into_vec(), !rev))
}

/// Applies `change` to `key` at `revision` (greater than the key's last change, or equal for
/// a second change of the key in one batch, which replaces the first): the version it
/// supersedes moves to history, a delete leaves a marker there. A delete of an absent key
/// writes nothing.
pub fn write<R: Records + ?Sized>(
    r: &mut R,
    key: &[u8],
    change: Change,
    revision: u64,
) -> Result<Written> {
    let dk = keys::data_key(key);
    let old = r.read(&dk)?;
    let before = match &old {
        Some(rec) => Some(decode(rec)?.0),
        None => None,
    };
    // A second change of one key in one write (a batch) replaces the first in place: the
    // version the batch superseded is in history already.
    let again = before.is_some_and(|b| b.mod_revision == revision);
    if let Some(b) = before {
        if revision < b.mod_revision {
            return Err(Error::Corrupt(format!(
                "a write at revision {revision} to a key last changed at {}",
                b.mod_revision
            )));
        }
    }
    let after = match change {
        Change::Put(value) => {
            let meta = match before {
                Some(b) => Meta {
                    create_revision: b.create_revision,
                    mod_revision: revision,
                    version: if again { b.version } else { b.version + 1 },
                },
                None => Meta {
                    create_revision: revision,
                    mod_revision: revision,
                    version: 1,
                },
            };
            r.put(dk, encode(&meta, &value));
            Some(meta)
        }
        Change::Delete => {
            if before.is_some() {
                r.delete(dk);
                r.put(history_key(key, revision)?, vec![DELETED]);
            }
            None
        }
    };
    if let (Some(b), Some(rec)) = (before, old) {
        if !again {
            r.put(history_key(key, b.mod_revision)?, rec);
        }
    }
    Ok(Written { before, after })
}

/// What a bare value of a directory or backup from before versioned keys becomes: a version
/// from before history (revision 0).
pub(crate) const BEFORE_HISTORY: Meta = Meta {
    create_revision: 0,
    mod_revision: 0,
    version: 1,
};

/// A version or delete record as read from history.
fn from_history(record: &[u8]) -> Result<Option<Versioned>> {
    match record.first() {
        Some(&DELETED) => Ok(None),
        _ => {
            let (meta, value) = decode(record)?;
            Ok(Some(Versioned {
                meta,
                value: value.to_vec(),
            }))
        }
    }
}

impl Engine {
    /// The newest version of `key`, if it exists.
    pub fn get_versioned(&self, key: &[u8]) -> Result<Option<Versioned>> {
        match self.db().get_cf(self.cf(CF_DATA), keys::data_key(key))? {
            None => Ok(None),
            Some(rec) => {
                let (meta, value) = decode(&rec)?;
                Ok(Some(Versioned {
                    meta,
                    value: value.to_vec(),
                }))
            }
        }
    }

    /// `key` as of `revision`: its newest version changed at or before it, or None if it did
    /// not exist then (or its history there was compacted away).
    pub fn get_at(&self, key: &[u8], revision: u64) -> Result<Option<Versioned>> {
        state_at(&self.db().snapshot(), self.cf(CF_DATA), key, revision)
    }

    /// The keys in `[start, end)` (empty `end`: no bound) as of `revision`, in key order, at
    /// most `limit` of them.
    pub fn scan_at(
        &self,
        start: &[u8],
        end: &[u8],
        revision: u64,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Versioned)>> {
        let view = self.db().snapshot();
        Ok(scan_view(
            &view,
            self.cf(CF_DATA),
            start,
            end,
            revision,
            limit,
            usize::MAX,
        )?
        .kvs)
    }

    /// A client's read of `key` in group `space` (this engine's store) as of `revision` (0:
    /// the newest), through one view: the group's revisions then, and the key's version.
    /// Refuses a revision below the compacted one ([`Error::Compacted`]) or above the last
    /// ([`Error::FutureRevision`]).
    pub fn read_versioned(
        &self,
        space: Space,
        key: &[u8],
        revision: u64,
    ) -> Result<(Revisions, Option<Versioned>)> {
        let (lower, upper) = keys::data_key_range(key);
        self.guarded(&lower, &upper, || {
            let view = self.db().snapshot();
            let cf = self.cf(CF_DATA);
            let revs = decode_revisions(view.get_cf(cf, space.revisions_key())?.as_deref())?;
            let at = check_revision(revs, revision)?;
            Ok((revs, state_at(&view, cf, key, at)?))
        })
    }

    /// A client's scan page of `[start, end)` in group `space` as of `revision` (0: the
    /// newest), through one view: at most `limit` keys, and no more once their keys and values
    /// reach `max_bytes` (at least one, so a scan makes progress). Refuses revisions as
    /// [`Engine::read_versioned`] does.
    pub fn scan_versioned(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        revision: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Revisions, VersionPage)> {
        let (lower, upper) = keys::data_range(start, end);
        self.guarded(&lower, &upper, || {
            let view = self.db().snapshot();
            let cf = self.cf(CF_DATA);
            let revs = decode_revisions(view.get_cf(cf, space.revisions_key())?.as_deref())?;
            let at = check_revision(revs, revision)?;
            Ok((
                revs,
                scan_view(&view, cf, start, end, at, limit, max_bytes)?,
            ))
        })
    }

    /// The history records of the user keys in `[start, end)`: key, revision, record.
    #[cfg(test)]
    fn history_in(&self, start: &[u8], end: &[u8]) -> Result<Vec<HistoryRecord>> {
        let (lower, upper) = history_range(start, end)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(upper);
        let it = self.db().iterator_cf_opt(
            self.cf(CF_DATA),
            ro,
            IteratorMode::From(&lower, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in it {
            let (k, rec) = item?;
            let (key, rev) = parse_history_key(&k)?;
            out.push((key, rev, rec.to_vec()));
        }
        Ok(out)
    }

    /// Deletes the history that no read at or above `horizon` can need: for each key, every
    /// version older than its state at `horizon`, and that state too if it is a delete.
    /// Returns how many records went. The result of a read at or above the horizon is the same
    /// before and after.
    pub fn compact_history(&self, horizon: u64) -> Result<u64> {
        let (mut deleted, mut from) = (0, Vec::new());
        loop {
            let (n, next) = self.compact_history_step(horizon, &from, b"", 1024)?;
            deleted += n;
            match next {
                Some(k) => from = k,
                None => return Ok(deleted),
            }
        }
    }

    /// One bounded step of [`Engine::compact_history`] over the user keys `[from, end)`
    /// (empty `end`: no bound), until about `max` history records were looked at; returns how
    /// many went and the key to go on from (None: done). Steps can run between writes (never
    /// during one, and with `horizon` at most the last revision): a write comes at a revision
    /// above the horizon, so it never changes a key's state at the horizon, and what a step
    /// kept or dropped stays right.
    pub fn compact_history_step(
        &self,
        horizon: u64,
        from: &[u8],
        end: &[u8],
        max: usize,
    ) -> Result<(u64, Option<Vec<u8>>)> {
        let (lower, upper) = history_range(from, end)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(upper);
        let it = self.db().iterator_cf_opt(
            self.cf(CF_DATA),
            ro,
            IteratorMode::From(&lower, Direction::Forward),
        );
        let mut wb = WriteBatch::default();
        let (mut deleted, mut seen) = (0u64, 0usize);
        let mut sweep = Sweep::new(horizon);
        let mut next = None;
        for item in it {
            let (k, rec) = item?;
            let (key, rev) = parse_history_key(&k)?;
            // Stop at a new key once the step has done its share.
            if seen >= max && sweep.is_new(&key) {
                next = Some(key);
                break;
            }
            seen += 1;
            let newest = |key: &[u8]| Ok(self.get_versioned(key)?.map(|v| v.meta));
            if sweep.drops(key, rev, &rec, newest)? {
                wb.delete_cf(self.cf(CF_DATA), &k);
                deleted += 1;
            }
        }
        // Most steps find nothing to delete: an empty write would still queue behind the
        // store's synced log writes.
        if deleted > 0 {
            self.db().write(wb)?;
        }
        Ok((deleted, next))
    }
}

/// One page of a scan at a revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionPage {
    /// The keys and their versions, in key order.
    pub kvs: Vec<(Vec<u8>, Versioned)>,
    /// True when the limit or the byte cap cut the page.
    pub more: bool,
}

/// The revision a read at `revision` (0: the newest) of a group with `revs` answers at, or
/// why it cannot.
fn check_revision(revs: Revisions, revision: u64) -> Result<u64> {
    match revision {
        0 => Ok(revs.last),
        r if r < revs.compacted => Err(Error::Compacted {
            revision: r,
            compacted: revs.compacted,
        }),
        r if r > revs.last => Err(Error::FutureRevision {
            revision: r,
            last: revs.last,
        }),
        r => Ok(r),
    }
}

/// A database view the reads at a revision go through.
type View<'a> = rocksdb::SnapshotWithThreadMode<'a, rocksdb::DB>;

/// `key` as of `revision` in `view`: its newest version if changed by then, else the first of
/// its history (newest first) at or below it.
fn state_at(
    view: &View<'_>,
    cf: &rocksdb::ColumnFamily,
    key: &[u8],
    revision: u64,
) -> Result<Option<Versioned>> {
    if let Some(rec) = view.get_cf(cf, keys::data_key(key))? {
        let (meta, value) = decode(&rec)?;
        if meta.mod_revision <= revision {
            return Ok(Some(Versioned {
                meta,
                value: value.to_vec(),
            }));
        }
    }
    let prefix = history_prefix(key)?;
    let from = history_key(key, revision)?;
    let mut upper = prefix.clone();
    upper.extend_from_slice(&[0xff; 9]);
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(upper);
    let mut it = view.iterator_cf_opt(cf, ro, IteratorMode::From(&from, Direction::Forward));
    match it.next() {
        Some(item) => {
            let (k, rec) = item?;
            if !k.starts_with(&prefix) || k.len() != prefix.len() + 8 {
                return Ok(None);
            }
            from_history(&rec)
        }
        None => Ok(None),
    }
}

/// The keys in `[start, end)` as of `revision` in `view`: walks the newest versions and the
/// history of the range side by side, holding only the page it returns (at most `limit`
/// keys, and no more once they reach `max_bytes`, at least one).
fn scan_view(
    view: &View<'_>,
    cf: &rocksdb::ColumnFamily,
    start: &[u8],
    end: &[u8],
    revision: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<VersionPage> {
    let bounded = |lower: &[u8], upper: Vec<u8>| {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(upper);
        view.iterator_cf_opt(cf, ro, IteratorMode::From(lower, Direction::Forward))
    };
    let (lower, upper) = keys::data_range(start, end);
    let mut newest_it = bounded(&lower, upper);
    let (lower, upper) = history_range(start, end)?;
    let mut history_it = bounded(&lower, upper);
    let mut next_newest = || -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        match newest_it.next() {
            None => Ok(None),
            Some(item) => {
                let (k, rec) = item?;
                let key = keys::user_key(&k)
                    .ok_or_else(|| Error::Corrupt("non-data key inside the data range".into()))?;
                Ok(Some((key.to_vec(), rec.to_vec())))
            }
        }
    };
    let mut next_history = || -> Result<Option<HistoryRecord>> {
        match history_it.next() {
            None => Ok(None),
            Some(item) => {
                let (k, rec) = item?;
                let (key, rev) = parse_history_key(&k)?;
                Ok(Some((key, rev, rec.to_vec())))
            }
        }
    };
    let (mut newest, mut history) = (next_newest()?, next_history()?);
    let mut page = VersionPage::default();
    let mut bytes = 0usize;
    loop {
        let key = match (&newest, &history) {
            (None, None) => break,
            (Some((a, _)), Some((b, _, _))) => a.min(b).clone(),
            (Some((a, _)), None) => a.clone(),
            (None, Some((b, _, _))) => b.clone(),
        };
        let mut found = None;
        if let Some((_, rec)) = newest.take_if(|(k, _)| *k == key) {
            let (meta, value) = decode(&rec)?;
            if meta.mod_revision <= revision {
                found = Some(Some(Versioned {
                    meta,
                    value: value.to_vec(),
                }));
            }
            newest = next_newest()?;
        }
        while let Some((_, rev, rec)) = history.take_if(|(k, _, _)| *k == key) {
            if found.is_none() && rev <= revision {
                found = Some(from_history(&rec)?);
            }
            history = next_history()?;
        }
        if let Some(Some(v)) = found {
            let size = key.len() + v.value.len();
            if page.kvs.len() >= limit || (!page.kvs.is_empty() && bytes + size > max_bytes) {
                page.more = true;
                break;
            }
            bytes += size;
            page.kvs.push((key, v));
        }
    }
    Ok(page)
}

/// The stored bounds `[lower, upper)` of the history of the user keys in `[start, end)`
/// (empty `end`: no bound): the memcomparable encoding keeps the order of user keys.
pub fn history_range(start: &[u8], end: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let upper = if end.is_empty() {
        vec![HISTORY_PREFIX + 1]
    } else {
        history_prefix(end)?
    };
    Ok((history_prefix(start)?, upper))
}

/// Decides, record by record in stored order, which history records compaction at a horizon
/// drops: for each key, every record older than its state at the horizon, and that state too
/// if it is a delete. The background deletion and the replica hash (which skips what the
/// deletion may or may not have reached yet) both decide through it, so they agree.
pub(crate) struct Sweep {
    horizon: u64,
    /// The key being looked at, and whether its state at the horizon was found already (its
    /// records come newest first).
    current: Option<(Vec<u8>, bool)>,
}

impl Sweep {
    /// A sweep at `horizon`, before its first record.
    pub(crate) fn new(horizon: u64) -> Sweep {
        Sweep {
            horizon,
            current: None,
        }
    }

    /// Whether `key` is not the key of the last record decided.
    pub(crate) fn is_new(&self, key: &[u8]) -> bool {
        self.current.as_ref().is_none_or(|(c, _)| c != key)
    }

    /// Whether the history record `rec` of `key` at `rev` goes; `newest` reads the key's
    /// newest version's meta (asked once per key).
    pub(crate) fn drops(
        &mut self,
        key: Vec<u8>,
        rev: u64,
        rec: &[u8],
        newest: impl FnOnce(&[u8]) -> Result<Option<Meta>>,
    ) -> Result<bool> {
        let settled = match &self.current {
            Some((c, settled)) if *c == key => *settled,
            _ => newest(&key)?.is_some_and(|m| m.mod_revision <= self.horizon),
        };
        let drop = settled || (rev <= self.horizon && rec.first() == Some(&DELETED));
        self.current = Some((key, settled || rev <= self.horizon));
        Ok(drop)
    }
}

/// The user key and revision of a stored history key, or None if `k` is not one.
pub(crate) fn history_record_key(k: &[u8]) -> Option<(Vec<u8>, u64)> {
    parse_history_key(k).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;

    /// Every key's value at one revision, in the model.
    type State = BTreeMap<Vec<u8>, Vec<u8>>;

    /// Writes straight to the engine, one batch per call.
    struct Direct<'a> {
        engine: &'a Engine,
        wb: WriteBatch,
        overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    }

    impl Records for Direct<'_> {
        fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
            if let Some(v) = self.overlay.get(key) {
                return Ok(v.clone());
            }
            Ok(self.engine.db().get_cf(self.engine.cf(CF_DATA), key)?)
        }
        fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
            self.wb.put_cf(self.engine.cf(CF_DATA), &key, &value);
            self.overlay.insert(key, Some(value));
        }
        fn delete(&mut self, key: Vec<u8>) {
            self.wb.delete_cf(self.engine.cf(CF_DATA), &key);
            self.overlay.insert(key, None);
        }
    }

    fn apply(engine: &Engine, key: &[u8], change: Change, rev: u64) -> Written {
        let mut d = Direct {
            engine,
            wb: WriteBatch::default(),
            overlay: BTreeMap::new(),
        };
        let w = write(&mut d, key, change, rev).expect("write");
        engine.db().write(d.wb).expect("batch");
        w
    }

    #[test]
    fn records_round_trip_and_history_keys_sort_by_key_then_newest_first() {
        let meta = Meta {
            create_revision: 3,
            mod_revision: 300,
            version: 7,
        };
        let rec = encode(&meta, b"value");
        assert_eq!(decode(&rec).expect("decode"), (meta, &b"value"[..]));
        assert!(decode(b"").is_err() && decode(&[DELETED]).is_err());
        let keys = [&b"a"[..], b"a\x00", b"a\x00\x00", b"ab", b"b"];
        let mut all = Vec::new();
        for k in keys {
            for rev in [1u64, 2, 1 << 40] {
                all.push((history_key(k, rev).expect("key"), k.to_vec(), rev));
            }
        }
        let mut sorted = all.clone();
        sorted.sort();
        let order: Vec<(Vec<u8>, u64)> = sorted.iter().map(|(_, k, r)| (k.clone(), *r)).collect();
        let mut want: Vec<(Vec<u8>, u64)> = all.iter().map(|(_, k, r)| (k.clone(), *r)).collect();
        want.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        assert_eq!(order, want);
        for (hk, k, r) in &all {
            assert_eq!(parse_history_key(hk).expect("parse"), (k.clone(), *r));
        }
    }

    #[test]
    fn versions_and_revisions_follow_puts_and_deletes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(dir.path()).expect("open");
        let w = apply(&engine, b"k", Change::Put(b"v1".to_vec()), 5);
        let m1 = Meta {
            create_revision: 5,
            mod_revision: 5,
            version: 1,
        };
        assert_eq!((w.before, w.after), (None, Some(m1)));
        let w = apply(&engine, b"k", Change::Put(b"v2".to_vec()), 9);
        let m2 = Meta {
            create_revision: 5,
            mod_revision: 9,
            version: 2,
        };
        assert_eq!((w.before, w.after), (Some(m1), Some(m2)));
        assert_eq!(
            apply(&engine, b"k", Change::Delete, 12).after,
            None,
            "a delete ends the key"
        );
        assert_eq!(
            apply(&engine, b"gone", Change::Delete, 13),
            Written {
                before: None,
                after: None
            }
        );
        let w = apply(&engine, b"k", Change::Put(b"v3".to_vec()), 20);
        assert_eq!(
            w.after,
            Some(Meta {
                create_revision: 20,
                mod_revision: 20,
                version: 1
            }),
            "a put after a delete starts again"
        );
        let value = |rev| engine.get_at(b"k", rev).expect("get").map(|v| v.value);
        assert_eq!(value(4), None);
        assert_eq!(value(5), Some(b"v1".to_vec()));
        assert_eq!(value(11), Some(b"v2".to_vec()));
        assert_eq!(value(12), None);
        assert_eq!(value(19), None);
        assert_eq!(value(u64::MAX), Some(b"v3".to_vec()));
        // A write below the key's last revision is refused: revisions only go up.
        let mut d = Direct {
            engine: &engine,
            wb: WriteBatch::default(),
            overlay: BTreeMap::new(),
        };
        assert!(write(&mut d, b"k", Change::Put(b"x".to_vec()), 19).is_err());
    }

    /// Random writes to a few keys (some of them prefixes of others) against a model of every
    /// revision; reads at every revision, scans at every revision, and compactions at random
    /// horizons that must not change any answer at or above them.
    #[test]
    fn reads_at_every_revision_match_a_model_through_random_writes_and_compactions() {
        for seed in 0..8u64 {
            let dir = tempfile::tempdir().expect("tempdir");
            let engine = Engine::open(dir.path()).expect("open");
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let names: [&[u8]; 5] = [b"a", b"a\x00", b"ab", b"b", b"c\xff"];
            // The model: for each revision, every key's value then.
            let mut states: Vec<(u64, State)> = vec![(0, BTreeMap::new())];
            let mut rev = 0;
            let mut horizon = 0;
            let mut cursor: Option<Vec<u8>> = None;
            for step in 0..300 {
                rev += rng.gen_range(1..4);
                let key = names[rng.gen_range(0..names.len())];
                let mut now = states.last().map(|(_, s)| s.clone()).unwrap_or_default();
                if rng.gen_bool(0.7) {
                    let value = format!("{key:?}@{rev}").into_bytes();
                    apply(&engine, key, Change::Put(value.clone()), rev);
                    now.insert(key.to_vec(), value);
                } else {
                    apply(&engine, key, Change::Delete, rev);
                    now.remove(key);
                }
                states.push((rev, now));
                // Compaction in small steps between the writes, to a horizon that moves up
                // now and then.
                if step % 50 == 49 {
                    horizon = rng.gen_range(horizon..=rev);
                    cursor = Some(Vec::new());
                }
                if let Some(from) = cursor.take() {
                    let max = rng.gen_range(1..4);
                    cursor = engine
                        .compact_history_step(horizon, &from, b"", max)
                        .expect("compact")
                        .1;
                }
            }
            engine.compact_history(horizon).expect("compact");
            let state_at = |r: u64| {
                states
                    .iter()
                    .rev()
                    .find(|(at, _)| *at <= r)
                    .map(|(_, s)| s.clone())
                    .unwrap_or_default()
            };
            for r in horizon..=rev + 1 {
                let want = state_at(r);
                for key in names {
                    let got = engine.get_at(key, r).expect("get").map(|v| v.value);
                    assert_eq!(got.as_ref(), want.get(key), "seed {seed}, rev {r}, {key:?}");
                }
                let scan: BTreeMap<Vec<u8>, Vec<u8>> = engine
                    .scan_at(b"", b"", r, usize::MAX)
                    .expect("scan")
                    .into_iter()
                    .map(|(k, v)| (k, v.value))
                    .collect();
                assert_eq!(scan, want, "seed {seed}, scan at {r}");
                let part: Vec<Vec<u8>> = engine
                    .scan_at(b"a\x00", b"b", r, usize::MAX)
                    .expect("scan")
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect();
                let want_part: Vec<Vec<u8>> = want
                    .keys()
                    .filter(|k| k.as_slice() >= &b"a\x00"[..] && k.as_slice() < &b"b"[..])
                    .cloned()
                    .collect();
                assert_eq!(part, want_part, "seed {seed}, range scan at {r}");
            }
        }
    }

    #[test]
    fn compaction_keeps_history_bounded_under_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(dir.path()).expect("open");
        let mut rev = 0;
        for round in 0..50u64 {
            for k in 0..20u64 {
                rev += 1;
                apply(
                    &engine,
                    format!("k{k}").as_bytes(),
                    Change::Put(round.to_be_bytes().to_vec()),
                    rev,
                );
            }
            // Keep the last 40 revisions.
            engine
                .compact_history(rev.saturating_sub(40))
                .expect("compact");
        }
        let history = engine.history_in(b"", b"").expect("history").len();
        assert!(history <= 40, "{history} history records kept");
        assert_eq!(
            engine
                .get_at(b"k0", rev - 30)
                .expect("get")
                .map(|v| v.value),
            Some(48u64.to_be_bytes().to_vec())
        );
    }

    #[test]
    fn a_key_changed_twice_in_one_batch_keeps_one_version_at_that_revision() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(dir.path()).expect("open");
        apply(&engine, b"k", Change::Put(b"old".to_vec()), 5);
        let mut d = Direct {
            engine: &engine,
            wb: WriteBatch::default(),
            overlay: BTreeMap::new(),
        };
        write(&mut d, b"k", Change::Put(b"first".to_vec()), 9).expect("write");
        let w = write(&mut d, b"k", Change::Put(b"second".to_vec()), 9).expect("write");
        assert_eq!(w.after.map(|m| m.version), Some(2));
        write(&mut d, b"j", Change::Put(b"j".to_vec()), 9).expect("write");
        write(&mut d, b"j", Change::Delete, 9).expect("write");
        engine.db().write(d.wb).expect("batch");
        let at = |k: &[u8], rev| engine.get_at(k, rev).expect("get").map(|v| v.value);
        assert_eq!(at(b"k", 9), Some(b"second".to_vec()));
        assert_eq!(at(b"k", 8), Some(b"old".to_vec()));
        assert_eq!(at(b"j", 9), None);
        let history: Vec<(Vec<u8>, u64)> = engine
            .history_in(b"", b"")
            .expect("history")
            .into_iter()
            .map(|(k, r, _)| (k, r))
            .collect();
        assert_eq!(history, vec![(b"j".to_vec(), 9), (b"k".to_vec(), 5)]);
    }

    #[test]
    fn revisions_are_kept_in_the_groups_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(dir.path()).expect("open");
        let mut d = Direct {
            engine: &engine,
            wb: WriteBatch::default(),
            overlay: BTreeMap::new(),
        };
        assert_eq!(revisions(&d).expect("read"), Revisions::default());
        let revs = Revisions {
            last: 1 << 40,
            compacted: 77,
        };
        set_revisions(&mut d, revs);
        assert_eq!(revisions(&d).expect("read"), revs);
    }
}
