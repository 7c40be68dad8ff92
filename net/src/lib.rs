//! net — Kith's devices, agreement and block movement.
//!
//! This crate will hold device identity, the QUIC transport, the per-volume Paxos
//! group and block exchange. It depends on fossil and
//! venti; nothing below it depends on it.

pub mod entry;
mod codec;
pub mod error;
pub mod frame;
pub mod identity;
pub mod keyring;
pub mod pairing;
pub mod quic;
pub mod replica;

pub use error::{Error, Result};
