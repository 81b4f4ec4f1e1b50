//! Where a region's messages go in a turn: to the stores of its peers (by its meta, or, for an
//! uninitialized region, by what it heard), each as soon as raft-rs lets it go (see
//! `StoreCore::advance_sending`).

use super::*;

/// Collects one region's outgoing messages, addressed by store.
pub(super) struct Outbox<'a> {
    region_id: u64,
    from_store: u64,
    epoch: RegionEpoch,
    /// (peer, store) of the region's peers, from its meta.
    peers: Vec<(u64, u64)>,
    /// The stores of peers heard from (all an uninitialized region knows).
    heard: &'a HashMap<u64, u64>,
    /// Sends a message now, or gives it back to be returned in [`StoreOutput::messages`].
    send: &'a mut dyn FnMut(RegionMessage) -> Option<RegionMessage>,
    out: &'a mut Vec<RegionMessage>,
}

impl MessageSink for Outbox<'_> {
    fn send(&mut self, msgs: Vec<Message>) {
        for msg in msgs {
            // A peer neither in the region's meta nor heard from cannot be reached from here.
            let known = self
                .peers
                .iter()
                .find(|(p, _)| *p == msg.to)
                .map(|&(_, s)| s);
            let Some(to_store) = known.or_else(|| self.heard.get(&msg.to).copied()) else {
                continue;
            };
            let m = RegionMessage {
                region_id: self.region_id,
                from_store: self.from_store,
                to_store,
                epoch: self.epoch,
                msg,
            };
            if let Some(m) = (self.send)(m) {
                self.out.push(m);
            }
        }
    }
}

/// Where region `region_id`'s messages of this turn go: its peers' stores, by its meta and by
/// what it heard. Built per region per turn, so it copies only the few peers of the meta.
pub(super) fn outbox<'a>(
    region_id: u64,
    from_store: u64,
    core: &RegionCore,
    heard: &'a HashMap<u64, u64>,
    send: &'a mut dyn FnMut(RegionMessage) -> Option<RegionMessage>,
    out: &'a mut Vec<RegionMessage>,
) -> Outbox<'a> {
    let meta = core.replica().app().region();
    Outbox {
        region_id,
        from_store,
        epoch: meta.map(region::epoch).unwrap_or_default(),
        peers: meta
            .map(|m| m.peers.iter().map(|p| (p.id, p.store_id)).collect())
            .unwrap_or_default(),
        heard,
        send,
        out,
    }
}
