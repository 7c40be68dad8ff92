//! net — Kith's devices, agreement and block movement.
//!
//! - [`identity`]: device keys (Ed25519 + X25519), the user root key and the signed,
//!   hash-linked user chain that says which devices are live.
//! - [`keyring`]: the device's secrets on disk, sealed under a passphrase (Argon2id) or
//!   explicitly unencrypted.
//! - [`pairing`]: one-time pairing codes for a user's new device, `kith1…` invites.
//! - [`frame`] and [`quic`]: bounded, versioned frames over QUIC where each side is
//!   authenticated by its device key inside the handshake.
//! - [`entry`] and [`replica`]: a volume's log entries, sealed and signed by their
//!   author, agreed by the Paxos core.
//! - [`link`]: replicas over QUIC, and the routing of an endpoint's inbound frames.
//! - [`blocks`]: block exchange, verified against addresses, served behind a policy.
//!
//! Still to come: the glue that runs fossil on a replica (`docs/replication.md`). net depends on fossil, venti and paxos; nothing below it
//! depends on it.

pub mod blocks;
mod codec;
pub mod entry;
pub mod error;
pub mod frame;
pub mod identity;
pub mod keyring;
pub mod link;
pub mod pairing;
pub mod quic;
pub mod replica;

pub use error::{Error, Result};
