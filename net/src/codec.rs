//! Little-endian byte encodings shared by identity, keyring and pairing formats.
//!
//! `Reader` is the one place where untrusted bytes are consumed: every read is
//! bounds-checked and fails with `Error::Malformed` naming what was being decoded,
//! so decoders never index or panic. `Writer` is a thin `Vec<u8>` builder.

use crate::error::{Error, Result};

/// Cursor over untrusted bytes.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { bytes, what }
    }

    pub(crate) fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < len {
            return Err(Error::malformed(self.what, "truncated"));
        }
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A `u16`-length-prefixed byte string of at most `max_bytes`.
    pub(crate) fn bytes_u16(&mut self, max_bytes: usize) -> Result<&'a [u8]> {
        let len = usize::from(self.u16()?);
        self.bytes_of_len(len, max_bytes)
    }

    /// A `u32`-length-prefixed byte string of at most `max_bytes`.
    pub(crate) fn bytes_u32(&mut self, max_bytes: usize) -> Result<&'a [u8]> {
        let len = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
        self.bytes_of_len(len, max_bytes)
    }

    /// The next `len` bytes, refused before reading if `len` exceeds `max_bytes`.
    fn bytes_of_len(&mut self, len: usize, max_bytes: usize) -> Result<&'a [u8]> {
        if len > max_bytes {
            return Err(Error::TooLong {
                what: self.what,
                len_bytes: len,
                max_bytes,
            });
        }
        self.take(len)
    }

    /// A short UTF-8 string (u16 length prefix).
    pub(crate) fn string(&mut self, max_bytes: usize) -> Result<String> {
        let bytes = self.bytes_u16(max_bytes)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Error::malformed(self.what, "not UTF-8"))
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    /// Fails unless every byte was consumed (encodings are canonical).
    pub(crate) fn finish(self) -> Result<()> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(Error::malformed(self.what, "trailing bytes"))
        }
    }
}

/// Byte builder mirroring `Reader`.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) bytes: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    pub(crate) fn u8(&mut self, value: u8) -> &mut Self {
        self.bytes.push(value);
        self
    }

    pub(crate) fn u16(&mut self, value: u16) -> &mut Self {
        self.put(&value.to_le_bytes())
    }

    pub(crate) fn u32(&mut self, value: u32) -> &mut Self {
        self.put(&value.to_le_bytes())
    }

    pub(crate) fn u64(&mut self, value: u64) -> &mut Self {
        self.put(&value.to_le_bytes())
    }

    /// Caller guarantees `bytes.len() <= u16::MAX` (checked by the type's own bound).
    pub(crate) fn bytes_u16(&mut self, bytes: &[u8]) -> &mut Self {
        let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        self.u16(len);
        self.put(bytes.get(..usize::from(len)).unwrap_or(bytes))
    }

    pub(crate) fn bytes_u32(&mut self, bytes: &[u8]) -> &mut Self {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.u32(len);
        self.put(bytes)
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}
