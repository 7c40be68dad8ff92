//! `BlockRef`: everything needed to fetch, verify and open one block.

use crate::{Address, Error, Result};

/// What a block holds. Travels *inside* the ciphertext, so storage peers cannot tell
/// pointer blocks from data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// File content.
    Data = 0,
    /// A hash-tree node: a list of child `BlockRef`s.
    Pointer = 1,
    /// A namespace checkpoint or other metadata blob written by fossil.
    Meta = 2,
}

impl Kind {
    pub fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            0 => Some(Kind::Data),
            1 => Some(Kind::Pointer),
            2 => Some(Kind::Meta),
            _ => None,
        }
    }
}

/// `(address, key, epoch, length)`: 76 bytes on the wire, little-endian.
///
/// `length` is the plaintext length of the content the ref stands for (for a pointer
/// block: the total length of the subtree). Refs travel only inside sealed metadata or
/// sealed pointer blocks: the key is the block's content key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockRef {
    pub address: Address,
    pub key: [u8; 32],
    pub epoch: u32,
    pub length: u64,
}

impl BlockRef {
    pub const ENCODED_LEN: usize = 32 + 32 + 4 + 8;

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[..32].copy_from_slice(&self.address.0);
        out[32..64].copy_from_slice(&self.key);
        out[64..68].copy_from_slice(&self.epoch.to_le_bytes());
        out[68..76].copy_from_slice(&self.length.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<BlockRef> {
        let bytes: &[u8; Self::ENCODED_LEN] = bytes.try_into().map_err(|_| Error::Malformed {
            what: "block ref",
            detail: format!("{} bytes, want {}", bytes.len(), Self::ENCODED_LEN),
        })?;
        let mut address = [0u8; 32];
        address.copy_from_slice(&bytes[..32]);
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[32..64]);
        let mut epoch = [0u8; 4];
        epoch.copy_from_slice(&bytes[64..68]);
        let mut length = [0u8; 8];
        length.copy_from_slice(&bytes[68..76]);
        Ok(BlockRef {
            address: Address(address),
            key,
            epoch: u32::from_le_bytes(epoch),
            length: u64::from_le_bytes(length),
        })
    }
}

impl std::fmt::Debug for BlockRef {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockRef")
            .field("address", &self.address)
            .field("epoch", &self.epoch)
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn encode_decode_round_trip(address: [u8; 32], key: [u8; 32], epoch: u32, length: u64) {
            let block_ref = BlockRef { address: Address(address), key, epoch, length };
            prop_assert_eq!(BlockRef::decode(&block_ref.encode())?, block_ref);
        }

        #[test]
        fn decode_rejects_wrong_lengths(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assume!(bytes.len() != BlockRef::ENCODED_LEN);
            prop_assert!(BlockRef::decode(&bytes).is_err());
        }
    }
}
