//! Replicas over real QUIC: the glue between an [`Endpoint`] and its users.
//!
//! - [`QuicLink`] is a [`Link`]: it maps the replica's [`NodeId`]s to devices through
//!   a [`NodeTable`] and sends each Paxos message fire-and-forget
//!   ([`Endpoint::send_detached`]); Paxos tolerates the loss.
//! - [`PaxosRouter`] hands inbound Paxos frames to the replica of their volume, naming
//!   the sender by the node id of its *authenticated* device (never by anything in the
//!   bytes).
//! - [`Dispatch`] owns the endpoint's one inbound channel and routes every frame by kind
//!   to its owner: Paxos frames to the router, block requests to a
//!   [`BlockServer`], anything else to an optional channel (or refused).
//!
//! ```text
//! Paxos frame body = volume u128 (little-endian) ‖ paxos message
//! ```
//! The volume prefix lets one endpoint carry the groups of several volumes; the core
//! drops a message for another volume anyway, so a wrong prefix costs nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;
use paxos::{NodeId, VolumeId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::blocks::BlockServer;
use crate::frame::Kind;
use crate::identity::DeviceId;
use crate::quic::{Admission, Endpoint, Inbound};
use crate::replica::{Link, Replica};

/// Bytes of the volume prefix of a Paxos frame.
const VOLUME_PREFIX_BYTES: usize = 16;

/// Which device speaks for which node id in the volumes' Paxos groups.
#[derive(Debug, Default)]
pub struct NodeTable {
    maps: RwLock<(BTreeMap<NodeId, DeviceId>, HashMap<DeviceId, NodeId>)>,
    /// Every device that ever held a node id, kept after [`NodeTable::remove`]: the
    /// entries it authored before it left stay verifiable, so every device applies
    /// the same log (node ids are never reused).
    authors: RwLock<BTreeMap<NodeId, DeviceId>>,
}

impl NodeTable {
    pub fn new(pairs: impl IntoIterator<Item = (NodeId, DeviceId)>) -> NodeTable {
        let table = NodeTable::default();
        for (node, device) in pairs {
            table.insert(node, device);
        }
        table
    }

    /// Maps `node` to `device` (replacing either's earlier mapping).
    pub fn insert(&self, node: NodeId, device: DeviceId) {
        self.authors.write().insert(node, device);
        let mut maps = self.maps.write();
        if let Some(old) = maps.0.insert(node, device) {
            maps.1.remove(&old);
        }
        if let Some(old) = maps.1.insert(device, node)
            && old != node
        {
            maps.0.remove(&old);
        }
    }

    pub fn remove(&self, node: NodeId) {
        let mut maps = self.maps.write();
        if let Some(device) = maps.0.remove(&node) {
            maps.1.remove(&device);
        }
    }

    pub fn device(&self, node: NodeId) -> Option<DeviceId> {
        self.maps.read().0.get(&node).copied()
    }

    /// The device that holds or held `node`: who signed that node's log entries.
    pub fn author(&self, node: NodeId) -> Option<DeviceId> {
        self.authors.read().get(&node).copied()
    }

    pub fn node(&self, device: &DeviceId) -> Option<NodeId> {
        self.maps.read().1.get(device).copied()
    }

    /// Every mapping, by node id.
    pub fn pairs(&self) -> Vec<(NodeId, DeviceId)> {
        self.maps.read().0.iter().map(|(n, d)| (*n, *d)).collect()
    }
}

/// A replica's outgoing Paxos frames, over QUIC.
#[derive(Debug)]
pub struct QuicLink {
    endpoint: Endpoint,
    volume: VolumeId,
    nodes: Arc<NodeTable>,
}

impl QuicLink {
    pub fn new(endpoint: Endpoint, volume: VolumeId, nodes: Arc<NodeTable>) -> QuicLink {
        QuicLink {
            endpoint,
            volume,
            nodes,
        }
    }
}

impl Link for QuicLink {
    fn send(&self, to: NodeId, bytes: Vec<u8>) {
        let Some(device) = self.nodes.device(to) else {
            tracing::debug!(%to, "no device known for node; paxos message dropped");
            return;
        };
        let body_bytes = VOLUME_PREFIX_BYTES + bytes.len();
        let max_bytes = Kind::PAXOS.body_bytes_max().unwrap_or(0) as usize;
        if body_bytes > max_bytes {
            // Retrying cannot help: the frame bound is below the core's message bound.
            tracing::warn!(%to, body_bytes, max_bytes, "paxos message above the frame bound; dropped");
            return;
        }
        let mut body = Vec::with_capacity(body_bytes);
        body.extend_from_slice(&self.volume.0.to_le_bytes());
        body.extend_from_slice(&bytes);
        self.endpoint.send_detached(device, Kind::PAXOS, body);
    }
}

/// Hands inbound Paxos frames to the replicas of this device, by volume.
#[derive(Debug)]
pub struct PaxosRouter {
    nodes: Arc<NodeTable>,
    replicas: RwLock<HashMap<VolumeId, Replica>>,
}

impl PaxosRouter {
    pub fn new(nodes: Arc<NodeTable>) -> PaxosRouter {
        PaxosRouter {
            nodes,
            replicas: RwLock::new(HashMap::new()),
        }
    }

    /// Routes frames of `replica.volume()` to `replica` (replacing an earlier one).
    pub fn attach(&self, replica: Replica) {
        self.replicas.write().insert(replica.volume(), replica);
    }

    /// Frames of `volume` are dropped from now on.
    pub fn detach(&self, volume: VolumeId) {
        self.replicas.write().remove(&volume);
    }

    /// Delivers one inbound Paxos frame, or drops it (with a debug log) when the
    /// sender is no node of ours, the volume has no replica here, or it is malformed.
    pub fn route(&self, inbound: Inbound) {
        let peer = inbound.peer;
        if inbound.admission != Admission::Member {
            tracing::debug!(%peer, "paxos frame from a non-member; dropped");
            return;
        }
        if let Some(responder) = inbound.responder {
            responder.refuse("paxos frames are messages, not requests");
            return;
        }
        let Some(from) = self.nodes.node(&peer) else {
            tracing::debug!(%peer, "paxos frame from a device with no node id; dropped");
            return;
        };
        let mut body = inbound.frame.body;
        let Some(volume) = body
            .get(..VOLUME_PREFIX_BYTES)
            .and_then(|prefix| <[u8; VOLUME_PREFIX_BYTES]>::try_from(prefix).ok())
            .map(|prefix| VolumeId(u128::from_le_bytes(prefix)))
        else {
            tracing::debug!(%peer, "paxos frame shorter than its volume; dropped");
            return;
        };
        let Some(replica) = self.replicas.read().get(&volume).cloned() else {
            tracing::debug!(%peer, volume = volume.0, "paxos frame for a volume not here; dropped");
            return;
        };
        body.drain(..VOLUME_PREFIX_BYTES);
        replica.deliver(from, body);
    }
}

/// The owners of an endpoint's inbound frames, by kind.
#[derive(Debug, Default)]
pub struct Dispatch {
    /// Receives [`Kind::PAXOS`] frames.
    pub paxos: Option<Arc<PaxosRouter>>,
    /// Receives [`Kind::BLOCK_REQUEST`] and [`Kind::BLOCK_PUSH`] frames.
    pub blocks: Option<Arc<BlockServer>>,
    /// Receives every other frame; without it (or when it is full) requests are
    /// refused and messages dropped.
    pub other: Option<mpsc::Sender<Inbound>>,
}

impl Dispatch {
    /// Routes frames from `inbound` until the endpoint and its connections are gone.
    /// Never waits on an owner: each handler queues or spawns.
    pub fn spawn(self, mut inbound: mpsc::Receiver<Inbound>) -> JoinHandle<()> {
        tokio::spawn(async move {
            while let Some(frame) = inbound.recv().await {
                self.route(frame);
            }
        })
    }

    fn route(&self, inbound: Inbound) {
        let kind = inbound.frame.kind;
        match (kind, &self.paxos, &self.blocks) {
            (Kind::PAXOS, Some(paxos), _) => paxos.route(inbound),
            (Kind::BLOCK_REQUEST | Kind::BLOCK_PUSH, _, Some(blocks)) => blocks.serve(inbound),
            _ => {
                let unhandled = match &self.other {
                    Some(other) => match other.try_send(inbound) {
                        Ok(()) => None,
                        Err(mpsc::error::TrySendError::Full(inbound))
                        | Err(mpsc::error::TrySendError::Closed(inbound)) => Some(inbound),
                    },
                    None => Some(inbound),
                };
                if let Some(inbound) = unhandled {
                    tracing::debug!(peer = %inbound.peer, kind = kind.as_u8(), "no owner for frame");
                    if let Some(responder) = inbound.responder {
                        responder.refuse("no handler for this frame kind");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(byte: u8) -> DeviceId {
        DeviceId::from_bytes([byte; 32])
    }

    #[test]
    fn node_table_keeps_one_device_per_node_and_one_node_per_device() {
        let table = NodeTable::new([(NodeId(1), device(1)), (NodeId(2), device(2))]);
        assert_eq!(table.node(&device(2)), Some(NodeId(2)));

        // Node 1 moves to a new device: its old device no longer speaks for it.
        table.insert(NodeId(1), device(9));
        assert_eq!(table.device(NodeId(1)), Some(device(9)));
        assert_eq!(table.node(&device(1)), None);

        // Device 2 is given node 3: node 2 no longer maps to it.
        table.insert(NodeId(3), device(2));
        assert_eq!(table.node(&device(2)), Some(NodeId(3)));
        assert_eq!(table.device(NodeId(2)), None);

        table.remove(NodeId(3));
        assert_eq!(table.node(&device(2)), None);
        assert_eq!(table.device(NodeId(3)), None);
    }
}
