//! Wire and disk encoding: versioned, little-endian, length-prefixed, strict.
//!
//! `encode(envelope)` = `version u8 (=1) ‖ volume u128 ‖ config u64 ‖ ballot ‖ tag u8 ‖
//! body`. A ballot is `epoch u64 ‖ round u64 ‖ node u64`; a vector is `count u32 ‖
//! items`; bytes are `len u32 ‖ bytes`; `Option` is `0u8` or `1u8 ‖ value`. Decoding
//! refuses input longer than `MESSAGE_BYTES_MAX`, any count or length above its bound or
//! above what the remaining input could hold (so allocation is bounded by input size),
//! unknown versions and tags, invalid configurations and trailing bytes. It never panics.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use crate::ballot::Ballot;
use crate::chain::ChainHash;
use crate::config::Config;
use crate::error::Error;
use crate::ids::{ConfigId, NodeId, ReadId, Slot, VolumeId};
use crate::limits::{
    BATCH_ENTRIES_MAX, CATCHUP_ENTRIES_MAX, ENTRY_BYTES_MAX, FORWARD_ENTRIES_MAX, LEARNERS_MAX,
    MESSAGE_BYTES_MAX, PROPOSERS_MAX, SNAPSHOT_BYTES_MAX, VOTERS_MAX,
};
use crate::message::{Body, Command, Entry, Envelope, Snapshot};

/// Current encoding version.
pub const VERSION: u8 = 1;

/// Where encoded bytes go: a buffer, or straight into a hasher (the chain hash encodes
/// entries without allocating).
pub(crate) trait Sink {
    fn push(&mut self, byte: u8);
    fn extend_from_slice(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn push(&mut self, byte: u8) {
        Vec::push(self, byte);
    }

    fn extend_from_slice(&mut self, bytes: &[u8]) {
        Vec::extend_from_slice(self, bytes);
    }
}

impl Sink for blake3::Hasher {
    fn push(&mut self, byte: u8) {
        self.update(&[byte]);
    }

    fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

/// Entries in one `Promise`: an acceptor holds values only within its accept window
/// of its commit index, plus what a new leader re-proposes (the same window + a no-op).
const PROMISE_ENTRIES_MAX: usize =
    (crate::limits::ACCEPT_WINDOW_SLOTS + crate::limits::SLOTS_IN_FLIGHT_MAX) as usize;
const RANKING_MAX: usize = VOTERS_MAX;

/// Encodes a message.
pub fn encode(envelope: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(VERSION);
    out.extend_from_slice(&envelope.volume.0.to_le_bytes());
    put_u64(&mut out, envelope.config.0);
    put_ballot(&mut out, envelope.ballot);
    encode_body(&envelope.body, &mut out);
    out
}

/// Decodes a message, strictly (see the module comment).
pub fn decode(bytes: &[u8]) -> Result<Envelope, Error> {
    if bytes.len() > MESSAGE_BYTES_MAX {
        return Err(Error::TooLarge {
            what: "message",
            len: bytes.len(),
            max: MESSAGE_BYTES_MAX,
        });
    }
    let mut r = Reader::new(bytes, "message");
    let version = r.u8()?;
    if version != VERSION {
        return Err(Error::UnknownVersion {
            what: "message",
            version,
        });
    }
    let volume = VolumeId(r.u128()?);
    let config = ConfigId(r.u64()?);
    let ballot = r.ballot()?;
    let body = r.body()?;
    r.finish()?;
    Ok(Envelope {
        volume,
        config,
        ballot,
        body,
    })
}

/// Appends the encoding of one entry (used by the chain hash and the durable store).
pub fn encode_entry(entry: &Entry, out: &mut Vec<u8>) {
    write_entry(entry, out);
}

/// Writes the encoding of one entry to any sink.
pub(crate) fn write_entry(entry: &Entry, out: &mut impl Sink) {
    match entry {
        Entry::Noop => out.push(0),
        Entry::Command(c) => {
            out.push(1);
            put_command(out, c);
        }
        Entry::Reconfigure(config) => {
            out.push(2);
            put_config(out, config);
        }
    }
}

/// Decodes exactly one entry.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, Error> {
    let mut r = Reader::new(bytes, "entry");
    let entry = r.entry()?;
    r.finish()?;
    Ok(entry)
}

/// Encodes a snapshot (versioned, for the durable store).
pub fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    let mut out = vec![VERSION];
    put_snapshot(&mut out, snapshot);
    out
}

/// Decodes a snapshot written by [`encode_snapshot`].
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, Error> {
    let mut r = Reader::new(bytes, "snapshot");
    let version = r.u8()?;
    if version != VERSION {
        return Err(Error::UnknownVersion {
            what: "snapshot",
            version,
        });
    }
    let snapshot = r.snapshot()?;
    r.finish()?;
    Ok(snapshot)
}

/// Encodes a ballot as 24 bytes (for the durable store).
pub fn encode_ballot(ballot: Ballot) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    put_ballot(&mut out, ballot);
    out
}

/// Decodes a ballot written by [`encode_ballot`].
pub fn decode_ballot(bytes: &[u8]) -> Result<Ballot, Error> {
    let mut r = Reader::new(bytes, "ballot");
    let ballot = r.ballot()?;
    r.finish()?;
    Ok(ballot)
}

/// Encodes a command (for the durable proposal queue).
pub fn encode_command(command: &Command) -> Vec<u8> {
    let mut out = Vec::new();
    put_command(&mut out, command);
    out
}

/// Decodes a command written by [`encode_command`].
pub fn decode_command(bytes: &[u8]) -> Result<Command, Error> {
    let mut r = Reader::new(bytes, "command");
    let command = r.command()?;
    r.finish()?;
    Ok(command)
}

fn encode_body(body: &Body, out: &mut Vec<u8>) {
    match body {
        Body::Prepare { first } => {
            out.push(1);
            put_u64(out, first.0);
        }
        Body::Promise {
            first,
            committed,
            accepted,
        } => {
            out.push(2);
            put_u64(out, first.0);
            put_u64(out, committed.0);
            put_len(out, accepted.len());
            for (slot, ballot, entry) in accepted {
                put_u64(out, slot.0);
                put_ballot(out, *ballot);
                encode_entry(entry, out);
            }
        }
        Body::Accept {
            first,
            entries,
            decided,
        } => {
            out.push(3);
            put_u64(out, first.0);
            put_u64(out, decided.0);
            put_entries(out, entries);
        }
        Body::Accepted { first, count } => {
            out.push(4);
            put_u64(out, first.0);
            out.extend_from_slice(&count.to_le_bytes());
        }
        Body::Reject {
            promised,
            committed,
        } => {
            out.push(5);
            put_ballot(out, *promised);
            put_u64(out, committed.0);
        }
        Body::Heartbeat {
            decided,
            head,
            round,
            ranking,
        } => {
            out.push(6);
            put_u64(out, decided.0);
            out.extend_from_slice(&head.0);
            put_u64(out, *round);
            put_len(out, ranking.len());
            for n in ranking {
                put_u64(out, n.0);
            }
        }
        Body::HeartbeatAck {
            round,
            committed,
            score_ms,
        } => {
            out.push(7);
            put_u64(out, *round);
            put_u64(out, committed.0);
            out.extend_from_slice(&score_ms.to_le_bytes());
        }
        Body::Fetch { first } => {
            out.push(8);
            put_u64(out, first.0);
        }
        Body::Entries {
            first,
            prev,
            entries,
            committed,
        } => {
            out.push(9);
            put_u64(out, first.0);
            out.extend_from_slice(&prev.0);
            put_u64(out, committed.0);
            put_entries(out, entries);
        }
        Body::SnapshotData { snapshot } => {
            out.push(10);
            put_snapshot(out, snapshot);
        }
        Body::Forward { commands } => {
            out.push(11);
            put_len(out, commands.len());
            for c in commands {
                put_command(out, c);
            }
        }
        Body::Redirect { leader } => {
            out.push(12);
            match leader {
                None => out.push(0),
                Some(n) => {
                    out.push(1);
                    put_u64(out, n.0);
                }
            }
        }
        Body::ReadIndexRequest { id } => {
            out.push(13);
            put_u64(out, id.0);
        }
        Body::ReadIndexReply { id, slot } => {
            out.push(14);
            put_u64(out, id.0);
            match slot {
                None => out.push(0),
                Some(s) => {
                    out.push(1);
                    put_u64(out, s.0);
                }
            }
        }
        Body::TimeoutNow => out.push(15),
    }
}

fn put_u64(out: &mut impl Sink, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Lengths are bounded far below `u32::MAX` by the limits; saturate defensively.
fn put_len(out: &mut impl Sink, len: usize) {
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
}

fn put_bytes(out: &mut impl Sink, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn put_ballot(out: &mut impl Sink, b: Ballot) {
    put_u64(out, b.epoch.0);
    put_u64(out, b.round);
    put_u64(out, b.node.0);
}

fn put_command(out: &mut impl Sink, c: &Command) {
    put_u64(out, c.proposer.0);
    put_u64(out, c.seq);
    put_bytes(out, &c.payload);
}

fn put_entries(out: &mut Vec<u8>, entries: &[Entry]) {
    put_len(out, entries.len());
    for e in entries {
        encode_entry(e, out);
    }
}

fn put_nodes(out: &mut impl Sink, nodes: &BTreeSet<NodeId>) {
    put_len(out, nodes.len());
    for n in nodes {
        put_u64(out, n.0);
    }
}

fn put_config(out: &mut impl Sink, c: &Config) {
    put_u64(out, c.id.0);
    put_nodes(out, &c.voters);
    put_nodes(out, &c.witnesses);
    put_nodes(out, &c.learners);
    out.push(c.phase1_quorum);
    out.push(c.phase2_quorum);
}

fn put_snapshot(out: &mut Vec<u8>, s: &Snapshot) {
    put_u64(out, s.slot.0);
    out.extend_from_slice(&s.chain.0);
    put_config(out, &s.config);
    put_len(out, s.applied_seqs.len());
    for (node, seq) in &s.applied_seqs {
        put_u64(out, node.0);
        put_u64(out, *seq);
    }
    put_bytes(out, &s.state);
}

/// A bounds-checked cursor over untrusted bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader {
            bytes,
            offset: 0,
            what,
        }
    }

    fn malformed(&self) -> Error {
        Error::Malformed {
            what: self.what,
            offset: self.offset,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.offset.checked_add(n).ok_or_else(|| self.malformed())?;
        let slice = self
            .bytes
            .get(self.offset..end)
            .ok_or_else(|| self.malformed())?;
        self.offset = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let slice = self.take(N)?;
        <[u8; N]>::try_from(slice).map_err(|_| self.malformed())
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(u8::from_le_bytes(self.array::<1>()?))
    }

    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array::<4>()?))
    }

    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array::<8>()?))
    }

    fn u128(&mut self) -> Result<u128, Error> {
        Ok(u128::from_le_bytes(self.array::<16>()?))
    }

    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.offset)
    }

    /// Reads a count, refusing more than `max` and more than the remaining input could
    /// encode at `item_bytes_min` bytes each (bounds allocation by input size).
    fn count(&mut self, max: usize, item_bytes_min: usize) -> Result<usize, Error> {
        let count = usize::try_from(self.u32()?).map_err(|_| self.malformed())?;
        if count > max {
            return Err(Error::TooLarge {
                what: self.what,
                len: count,
                max,
            });
        }
        if count.saturating_mul(item_bytes_min) > self.remaining() {
            return Err(self.malformed());
        }
        Ok(count)
    }

    fn bytes(&mut self, max: usize) -> Result<Vec<u8>, Error> {
        let len = self.count(max, 1)?;
        Ok(self.take(len)?.to_vec())
    }

    fn hash(&mut self) -> Result<ChainHash, Error> {
        Ok(ChainHash(self.array::<32>()?))
    }

    fn ballot(&mut self) -> Result<Ballot, Error> {
        Ok(Ballot {
            epoch: ConfigId(self.u64()?),
            round: self.u64()?,
            node: NodeId(self.u64()?),
        })
    }

    fn slot(&mut self) -> Result<Slot, Error> {
        Ok(Slot(self.u64()?))
    }

    fn command(&mut self) -> Result<Command, Error> {
        Ok(Command {
            proposer: NodeId(self.u64()?),
            seq: self.u64()?,
            payload: self.bytes(ENTRY_BYTES_MAX)?,
        })
    }

    fn nodes(&mut self, max: usize) -> Result<BTreeSet<NodeId>, Error> {
        let count = self.count(max, 8)?;
        let mut nodes = BTreeSet::new();
        for _ in 0..count {
            if !nodes.insert(NodeId(self.u64()?)) {
                return Err(self.malformed());
            }
        }
        Ok(nodes)
    }

    fn config(&mut self) -> Result<Config, Error> {
        let config = Config {
            id: ConfigId(self.u64()?),
            voters: self.nodes(VOTERS_MAX)?,
            witnesses: self.nodes(VOTERS_MAX)?,
            learners: self.nodes(LEARNERS_MAX)?,
            phase1_quorum: self.u8()?,
            phase2_quorum: self.u8()?,
        };
        config.validate()?;
        Ok(config)
    }

    fn entry(&mut self) -> Result<Entry, Error> {
        match self.u8()? {
            0 => Ok(Entry::Noop),
            1 => Ok(Entry::Command(self.command()?)),
            2 => Ok(Entry::Reconfigure(self.config()?)),
            _ => Err(self.malformed()),
        }
    }

    fn entries(&mut self, max: usize) -> Result<Vec<Entry>, Error> {
        let count = self.count(max, 1)?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(self.entry()?);
        }
        Ok(entries)
    }

    fn snapshot(&mut self) -> Result<Snapshot, Error> {
        let slot = self.slot()?;
        let chain = self.hash()?;
        let config = self.config()?;
        let count = self.count(PROPOSERS_MAX, 16)?;
        let mut applied_seqs = BTreeMap::new();
        for _ in 0..count {
            let node = NodeId(self.u64()?);
            let seq = self.u64()?;
            if applied_seqs.insert(node, seq).is_some() {
                return Err(self.malformed());
            }
        }
        let state = self.bytes(SNAPSHOT_BYTES_MAX)?;
        Ok(Snapshot {
            slot,
            chain,
            config,
            applied_seqs,
            state,
        })
    }

    fn body(&mut self) -> Result<Body, Error> {
        let body = match self.u8()? {
            1 => Body::Prepare {
                first: self.slot()?,
            },
            2 => {
                let first = self.slot()?;
                let committed = self.slot()?;
                let count = self.count(PROMISE_ENTRIES_MAX, 33)?;
                let mut accepted = Vec::with_capacity(count);
                for _ in 0..count {
                    accepted.push((self.slot()?, self.ballot()?, self.entry()?));
                }
                Body::Promise {
                    first,
                    committed,
                    accepted,
                }
            }
            3 => Body::Accept {
                first: self.slot()?,
                decided: self.slot()?,
                entries: self.entries(BATCH_ENTRIES_MAX)?,
            },
            4 => Body::Accepted {
                first: self.slot()?,
                count: self.u32()?,
            },
            5 => Body::Reject {
                promised: self.ballot()?,
                committed: self.slot()?,
            },
            6 => {
                let decided = self.slot()?;
                let head = self.hash()?;
                let round = self.u64()?;
                let count = self.count(RANKING_MAX, 8)?;
                let mut ranking = Vec::with_capacity(count);
                for _ in 0..count {
                    ranking.push(NodeId(self.u64()?));
                }
                Body::Heartbeat {
                    decided,
                    head,
                    round,
                    ranking,
                }
            }
            7 => Body::HeartbeatAck {
                round: self.u64()?,
                committed: self.slot()?,
                score_ms: self.u32()?,
            },
            8 => Body::Fetch {
                first: self.slot()?,
            },
            9 => Body::Entries {
                first: self.slot()?,
                prev: self.hash()?,
                committed: self.slot()?,
                entries: self.entries(CATCHUP_ENTRIES_MAX)?,
            },
            10 => Body::SnapshotData {
                snapshot: self.snapshot()?,
            },
            11 => {
                let count = self.count(FORWARD_ENTRIES_MAX, 20)?;
                let mut commands = Vec::with_capacity(count);
                for _ in 0..count {
                    commands.push(self.command()?);
                }
                Body::Forward { commands }
            }
            12 => Body::Redirect {
                leader: match self.u8()? {
                    0 => None,
                    1 => Some(NodeId(self.u64()?)),
                    _ => return Err(self.malformed()),
                },
            },
            13 => Body::ReadIndexRequest {
                id: ReadId(self.u64()?),
            },
            14 => {
                let id = ReadId(self.u64()?);
                let slot = match self.u8()? {
                    0 => None,
                    1 => Some(self.slot()?),
                    _ => return Err(self.malformed()),
                };
                Body::ReadIndexReply { id, slot }
            }
            15 => Body::TimeoutNow,
            _ => return Err(self.malformed()),
        };
        Ok(body)
    }

    fn finish(&self) -> Result<(), Error> {
        if self.offset == self.bytes.len() {
            Ok(())
        } else {
            Err(self.malformed())
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::collection::{btree_map, btree_set, vec};
    use proptest::prelude::*;

    fn node() -> impl Strategy<Value = NodeId> {
        (0u64..20).prop_map(NodeId)
    }

    fn slot() -> impl Strategy<Value = Slot> {
        any::<u64>().prop_map(Slot)
    }

    fn ballot() -> impl Strategy<Value = Ballot> {
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(e, round, n)| Ballot {
            epoch: ConfigId(e),
            round,
            node: NodeId(n),
        })
    }

    fn hash() -> impl Strategy<Value = ChainHash> {
        any::<[u8; 32]>().prop_map(ChainHash)
    }

    fn config() -> impl Strategy<Value = Config> {
        (
            any::<u64>(),
            btree_set(0u64..9, 1..=VOTERS_MAX),
            btree_set(100u64..400, 0..5),
        )
            .prop_flat_map(|(id, voters, learners)| {
                let voters: Vec<NodeId> = voters.into_iter().map(NodeId).collect();
                let n = voters.len();
                let witness_max = n.saturating_sub(1);
                (
                    Just(id),
                    Just(voters.clone()),
                    proptest::sample::subsequence(voters, 0..=witness_max),
                    Just(learners),
                    1..=n,
                )
            })
            .prop_map(|(id, voters, witnesses, learners, q1)| {
                let n = voters.len();
                let q2 = n + 1 - q1;
                Config::new(
                    ConfigId(id),
                    voters,
                    witnesses,
                    learners.into_iter().map(NodeId),
                    u8::try_from(q1).unwrap(),
                    u8::try_from(q2).unwrap(),
                )
                .unwrap()
            })
    }

    fn command() -> impl Strategy<Value = Command> {
        (node(), any::<u64>(), vec(any::<u8>(), 0..64)).prop_map(|(proposer, seq, payload)| {
            Command {
                proposer,
                seq,
                payload,
            }
        })
    }

    fn entry() -> impl Strategy<Value = Entry> {
        prop_oneof![
            Just(Entry::Noop),
            command().prop_map(Entry::Command),
            config().prop_map(Entry::Reconfigure),
        ]
    }

    fn snapshot() -> impl Strategy<Value = Snapshot> {
        (
            slot(),
            hash(),
            config(),
            btree_map(node(), any::<u64>(), 0..5),
            vec(any::<u8>(), 0..64),
        )
            .prop_map(|(slot, chain, config, applied_seqs, state)| Snapshot {
                slot,
                chain,
                config,
                applied_seqs,
                state,
            })
    }

    fn body() -> impl Strategy<Value = Body> {
        prop_oneof![
            slot().prop_map(|first| Body::Prepare { first }),
            (slot(), slot(), vec((slot(), ballot(), entry()), 0..4)).prop_map(
                |(first, committed, accepted)| Body::Promise {
                    first,
                    committed,
                    accepted
                }
            ),
            (slot(), vec(entry(), 0..4), slot()).prop_map(|(first, entries, decided)| {
                Body::Accept {
                    first,
                    entries,
                    decided,
                }
            }),
            (slot(), any::<u32>()).prop_map(|(first, count)| Body::Accepted { first, count }),
            (ballot(), slot()).prop_map(|(promised, committed)| Body::Reject {
                promised,
                committed
            }),
            (slot(), hash(), any::<u64>(), vec(node(), 0..VOTERS_MAX)).prop_map(
                |(decided, head, round, ranking)| Body::Heartbeat {
                    decided,
                    head,
                    round,
                    ranking
                }
            ),
            (any::<u64>(), slot(), any::<u32>()).prop_map(|(round, committed, score_ms)| {
                Body::HeartbeatAck {
                    round,
                    committed,
                    score_ms,
                }
            }),
            slot().prop_map(|first| Body::Fetch { first }),
            (slot(), hash(), vec(entry(), 0..4), slot()).prop_map(
                |(first, prev, entries, committed)| Body::Entries {
                    first,
                    prev,
                    entries,
                    committed
                }
            ),
            snapshot().prop_map(|snapshot| Body::SnapshotData { snapshot }),
            vec(command(), 0..4).prop_map(|commands| Body::Forward { commands }),
            proptest::option::of(node()).prop_map(|leader| Body::Redirect { leader }),
            any::<u64>().prop_map(|id| Body::ReadIndexRequest { id: ReadId(id) }),
            (any::<u64>(), proptest::option::of(slot())).prop_map(|(id, slot)| {
                Body::ReadIndexReply {
                    id: ReadId(id),
                    slot,
                }
            }),
            Just(Body::TimeoutNow),
        ]
    }

    fn envelope() -> impl Strategy<Value = Envelope> {
        (any::<u128>(), any::<u64>(), ballot(), body()).prop_map(
            |(volume, config, ballot, body)| Envelope {
                volume: VolumeId(volume),
                config: ConfigId(config),
                ballot,
                body,
            },
        )
    }

    proptest! {
        #[test]
        fn message_round_trips(msg in envelope()) {
            let bytes = encode(&msg);
            prop_assert_eq!(decode(&bytes).unwrap(), msg);
        }

        #[test]
        fn snapshot_and_entry_round_trip(s in snapshot(), e in entry()) {
            prop_assert_eq!(decode_snapshot(&encode_snapshot(&s)).unwrap(), s);
            let mut bytes = Vec::new();
            encode_entry(&e, &mut bytes);
            prop_assert_eq!(decode_entry(&bytes).unwrap(), e);
        }

        #[test]
        fn garbage_never_panics(bytes in vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
            let _ = decode_entry(&bytes);
            let _ = decode_snapshot(&bytes);
            let _ = decode_command(&bytes);
            let _ = decode_ballot(&bytes);
        }

        #[test]
        fn mutated_messages_never_panic(
            msg in envelope(),
            flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut bytes = encode(&msg);
            for (index, value) in flips {
                let i = index.index(bytes.len());
                bytes[i] = value;
            }
            let _ = decode(&bytes);
        }

        #[test]
        fn truncations_and_trailing_bytes_are_refused(msg in envelope(), extra in 1u8..=255) {
            let bytes = encode(&msg);
            for cut in 0..bytes.len() {
                prop_assert!(decode(&bytes[..cut]).is_err());
            }
            let mut longer = bytes.clone();
            longer.push(extra);
            prop_assert!(decode(&longer).is_err());
        }
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        let msg = Envelope {
            volume: VolumeId(1),
            config: ConfigId(1),
            ballot: Ballot::ZERO,
            body: Body::Accept {
                first: Slot(0),
                entries: vec![],
                decided: Slot(0),
            },
        };
        let mut bytes = encode(&msg);
        // Patch the entry count (last 4 bytes) to u32::MAX.
        let n = bytes.len();
        bytes[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&bytes), Err(Error::TooLarge { .. })));
        // Within the bound but beyond the input: refused as malformed.
        bytes[n - 4..].copy_from_slice(&200u32.to_le_bytes());
        assert!(matches!(decode(&bytes), Err(Error::Malformed { .. })));
    }

    #[test]
    fn unknown_version_and_invalid_config_are_refused() {
        let msg = Envelope {
            volume: VolumeId(1),
            config: ConfigId(1),
            ballot: Ballot::ZERO,
            body: Body::TimeoutNow,
        };
        let mut bytes = encode(&msg);
        bytes[0] = 2;
        assert!(matches!(decode(&bytes), Err(Error::UnknownVersion { .. })));
        // A configuration whose quorums do not intersect cannot be decoded.
        let bad = Config {
            id: ConfigId(2),
            voters: [NodeId(1), NodeId(2)].into_iter().collect(),
            witnesses: BTreeSet::new(),
            learners: BTreeSet::new(),
            phase1_quorum: 1,
            phase2_quorum: 1,
        };
        let mut bytes = Vec::new();
        encode_entry(&Entry::Reconfigure(bad), &mut bytes);
        assert!(matches!(
            decode_entry(&bytes),
            Err(Error::InvalidConfig { .. })
        ));
    }

    #[test]
    fn golden_prepare_encoding() {
        let msg = Envelope {
            volume: VolumeId(0x0102),
            config: ConfigId(3),
            ballot: Ballot {
                epoch: ConfigId(3),
                round: 4,
                node: NodeId(5),
            },
            body: Body::Prepare { first: Slot(6) },
        };
        let mut expected = vec![1u8];
        expected.extend_from_slice(&0x0102u128.to_le_bytes());
        for v in [3u64, 3, 4, 5] {
            expected.extend_from_slice(&v.to_le_bytes());
        }
        expected.push(1);
        expected.extend_from_slice(&6u64.to_le_bytes());
        assert_eq!(encode(&msg), expected);
    }
}
