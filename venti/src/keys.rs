//! Per-epoch subkeys for chunking and sealing.
//!
//! Every volume epoch has one random 32-byte secret `S(v,e)` (chosen and distributed by
//! `net`). venti derives its two subkeys from it with BLAKE3 `derive_key`, feeding the
//! volume id and epoch into the key material so no two volumes or epochs share a
//! subkey:
//!
//! ```text
//! km        = S(v,e) ‖ volume_id (16 B) ‖ epoch (u32 LE)
//! conv_key  = derive_key("kith 2026-01-01 chunk convergence v1", km)
//! gear_key  = derive_key("kith 2026-01-01 fastcdc gear v1", km)
//! ```
//!
//! `conv_key` is the PRF key of keyed-convergent sealing ([`crate::seal`]); `gear_key`
//! fills the chunker's Gear table ([`crate::chunk`]). Keys are wiped on drop and never
//! printed: `Debug` shows only the epoch.

use zeroize::Zeroize;

/// BLAKE3 `derive_key` context of the convergent-key PRF key. Changing it changes every
/// block key and address: it is part of the block format version.
pub const CONV_KEY_CONTEXT: &str = "kith 2026-01-01 chunk convergence v1";
/// BLAKE3 `derive_key` context of the Gear-table key. Part of the chunking format.
pub const GEAR_KEY_CONTEXT: &str = "kith 2026-01-01 fastcdc gear v1";

/// Length of the epoch secret `S(v,e)`.
pub const EPOCH_SECRET_LEN: usize = 32;
/// Length of a volume id.
pub const VOLUME_ID_LEN: usize = 16;

/// The subkeys of one volume epoch that venti needs.
#[derive(Clone)]
pub struct EpochKeys {
    epoch: u32,
    conv_key: [u8; 32],
    gear_key: [u8; 32],
}

impl EpochKeys {
    /// Derive the subkeys of `epoch` of volume `volume_id` from its epoch secret.
    pub fn derive(
        epoch_secret: &[u8; EPOCH_SECRET_LEN],
        volume_id: &[u8; VOLUME_ID_LEN],
        epoch: u32,
    ) -> EpochKeys {
        let mut key_material = [0u8; EPOCH_SECRET_LEN + VOLUME_ID_LEN + 4];
        key_material[..EPOCH_SECRET_LEN].copy_from_slice(epoch_secret);
        key_material[EPOCH_SECRET_LEN..EPOCH_SECRET_LEN + VOLUME_ID_LEN].copy_from_slice(volume_id);
        key_material[EPOCH_SECRET_LEN + VOLUME_ID_LEN..].copy_from_slice(&epoch.to_le_bytes());
        let keys = EpochKeys {
            epoch,
            conv_key: blake3::derive_key(CONV_KEY_CONTEXT, &key_material),
            gear_key: blake3::derive_key(GEAR_KEY_CONTEXT, &key_material),
        };
        key_material.zeroize();
        keys
    }

    /// The epoch these keys belong to; recorded in every `BlockRef` sealed with them.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// PRF key of keyed-convergent sealing: `K = keyed_hash(conv_key, kind ‖ data)`.
    pub fn conv_key(&self) -> &[u8; 32] {
        &self.conv_key
    }

    /// Key of the chunker's Gear table.
    pub fn gear_key(&self) -> &[u8; 32] {
        &self.gear_key
    }
}

impl Drop for EpochKeys {
    fn drop(&mut self) {
        self.conv_key.zeroize();
        self.gear_key.zeroize();
    }
}

impl std::fmt::Debug for EpochKeys {
    // Never print key bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochKeys")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    fn fixed_keys(epoch: u32) -> EpochKeys {
        let secret: [u8; 32] = std::array::from_fn(|i| i as u8);
        let volume_id: [u8; 16] = std::array::from_fn(|i| 0xa0 + i as u8);
        EpochKeys::derive(&secret, &volume_id, epoch)
    }

    /// Golden vector: these bytes are part of the format. A change here means every
    /// existing block key and chunk boundary changes.
    #[test]
    fn derivation_golden_vector() {
        let keys = fixed_keys(7);
        assert_eq!(keys.epoch(), 7);
        assert_eq!(hex(keys.conv_key()), GOLDEN_CONV_KEY);
        assert_eq!(hex(keys.gear_key()), GOLDEN_GEAR_KEY);
    }

    const GOLDEN_CONV_KEY: &str =
        "1f8fcf02b8552d7732646bd16cb8a6758a4a2c6edca929034f40c52404eda4e4";
    const GOLDEN_GEAR_KEY: &str =
        "ce462e2c681a2f170e9a5926f007f821d8ca6c9ed08b1c939cced472663a9ac5";

    #[test]
    fn subkeys_differ_by_purpose_epoch_and_volume() {
        let a = fixed_keys(7);
        let b = fixed_keys(8);
        assert_ne!(a.conv_key(), a.gear_key());
        assert_ne!(a.conv_key(), b.conv_key());
        assert_ne!(a.gear_key(), b.gear_key());
        let secret: [u8; 32] = std::array::from_fn(|i| i as u8);
        let other_volume = EpochKeys::derive(&secret, &[0u8; 16], 7);
        assert_ne!(a.conv_key(), other_volume.conv_key());
    }

    #[test]
    fn debug_does_not_print_keys() {
        let keys = fixed_keys(7);
        let printed = format!("{keys:?}");
        assert!(printed.contains("epoch: 7"));
        assert!(!printed.contains("conv_key"), "{printed}");
        assert!(!printed.contains("gear_key"), "{printed}");
    }
}
