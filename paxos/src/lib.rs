//! paxos — one Multi-Paxos group per Kith volume, as a sans-IO state machine.
//!
//! (The protocol specification is written out below in full once the core lands; this
//! header states the contract the API already keeps.)
//!
//! A [`Node`] is one replica. Inputs: [`Node::handle_message`], [`Node::handle_timeout`],
//! [`Node::propose`], [`Node::read`], [`Node::reconfigure`], [`Node::report_rtt`],
//! [`Node::compact`], and [`Node::recover`] + [`Node::start`] after a restart. Each
//! returns an ordered `Vec<`[`Effect`]`>`; a `Persist` must be durable before any later
//! effect runs. The core does no IO, reads no clock (`now_ms` is passed in) and uses no
//! randomness; every type is `Clone + Eq + Hash + Debug` over `BTreeMap`s so the same
//! code runs in production, in the seeded simulator and under stateright.

mod ballot;
mod chain;
pub mod codec;
mod config;
mod error;
mod ids;
pub mod limits;
mod message;
mod node;
mod store;

pub use ballot::Ballot;
pub use chain::ChainHash;
pub use config::Config;
pub use error::Error;
pub use ids::{ConfigId, Epoch, NodeId, ReadId, Slot, VolumeId};
pub use message::{Body, Command, Entry, Envelope, Snapshot};
pub use node::{Effect, Node, NodeOptions, Rejection, Role, Timer};
pub use store::{AcceptorStore, DurableState, DurableWrite, MemStore, SqliteStore};
