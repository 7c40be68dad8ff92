//! Block addresses: the BLAKE3 hash of a block's sealed bytes.

use std::fmt;

/// `BLAKE3(sealed block bytes)`. Anyone — even a device without keys — can check a
/// block against its address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(pub [u8; 32]);

impl Address {
    pub const LEN: usize = 32;

    /// The address of `sealed` bytes.
    pub fn of(sealed: &[u8]) -> Address {
        Address(*blake3::hash(sealed).as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// Parse 64 hex characters.
    pub fn from_hex(text: &str) -> Option<Address> {
        blake3::Hash::from_hex(text)
            .ok()
            .map(|hash| Address(*hash.as_bytes()))
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight bytes are enough to tell blocks apart in logs.
        write!(f, "Address({}…)", &self.to_hex()[..16])
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let address = Address::of(b"kith");
        assert_eq!(Address::from_hex(&address.to_hex()), Some(address));
        assert_eq!(Address::from_hex("zz"), None);
    }
}
