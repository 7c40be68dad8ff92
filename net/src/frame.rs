//! Framed, versioned, length-bounded messages on QUIC streams.
//!
//! Goals: a peer can never make us allocate more than the bound of the kind it
//! names, wait forever, or panic. Non-goals: multiplexing (QUIC streams do that),
//! encryption (TLS does that), meaning of bodies (each kind's owner decodes them).
//!
//! ```text
//! frame  = version u8 (=1) ‖ kind u8 ‖ len u32 (little-endian) ‖ body[len]
//! ```
//! The header is checked before the body is read: an unknown version or kind, or a
//! length above [`Kind::body_bytes_max`], is an error and the stream is ended with
//! an error code (see `quic`). A request is one frame on a bidirectional stream
//! answered by one frame; a message is one frame on a unidirectional stream.

use std::time::Duration;

use crate::error::{Error, Result};

/// The frame format version this build speaks.
pub const FRAME_VERSION: u8 = 1;
/// Bytes of the frame header.
pub const HEADER_BYTES: usize = 6;
/// The largest body any kind allows.
pub const FRAME_BODY_BYTES_MAX: u32 = 16 << 20;
/// Largest allocation made ahead of the bytes arriving.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// What a frame carries; decides its size bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kind(u8);

impl Kind {
    /// Paxos messages for a volume.
    pub const PAXOS: Kind = Kind(1);
    /// A request for blocks by `(volume, address)`.
    pub const BLOCK_REQUEST: Kind = Kind(2);
    /// Blocks sent in answer.
    pub const BLOCK_RESPONSE: Kind = Kind(3);
    /// Pairing a new device (the only kind a not-yet-paired device may send).
    pub const PAIR: Kind = Kind(4);
    /// A user chain, or an extension of one.
    pub const CHAIN: Kind = Kind(5);
    /// An answer refusing a request, body = UTF-8 reason.
    pub const ERROR: Kind = Kind(6);
    /// Echo / liveness: the answer carries the body back.
    pub const ECHO: Kind = Kind(7);
    /// Sent once by the accepting side on a unidirectional stream when it has
    /// accepted the connection (TLS 1.3 lets a client finish its handshake before
    /// the server has checked the client's key). Body = admission granted
    /// (1 member, 2 pairing only).
    pub const WELCOME: Kind = Kind(8);
    /// Blocks pushed to a device for it to hold (answered with `BLOCK_RESPONSE`).
    pub const BLOCK_PUSH: Kind = Kind(9);

    /// Kind from its byte, if this build knows it.
    pub fn from_u8(byte: u8) -> Option<Kind> {
        let kind = Kind(byte);
        kind.body_bytes_max().map(|_| kind)
    }

    pub const fn as_u8(self) -> u8 {
        self.0
    }

    /// Largest body of this kind; `None` for kinds this build does not know.
    pub const fn body_bytes_max(self) -> Option<u32> {
        match self.0 {
            // Paxos Accept batches and catch-up replies reach 4 MiB, a Promise 16 MiB.
            1 => Some(FRAME_BODY_BYTES_MAX),
            2 => Some(64 << 10),
            3 => Some(crate::blocks::RESPONSE_BYTES_MAX),
            4 => Some(4 << 10),
            5 => Some(2 << 20),
            6 => Some(1 << 10),
            7 => Some(1 << 20),
            8 => Some(16),
            9 => Some(crate::blocks::PUSH_BODY_BYTES_MAX),
            _ => None,
        }
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub body: Vec<u8>,
}

/// Checks a header and returns the kind and body length it announces.
pub fn decode_header(header: &[u8; HEADER_BYTES]) -> Result<(Kind, u32)> {
    let [version, kind, l0, l1, l2, l3] = *header;
    if version != FRAME_VERSION {
        return Err(Error::UnsupportedVersion {
            what: "frame",
            version,
        });
    }
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    let kind_checked = Kind::from_u8(kind).ok_or(Error::FrameKind { kind })?;
    let max_bytes = kind_checked.body_bytes_max().unwrap_or(0);
    if len > max_bytes {
        return Err(Error::FrameTooLong {
            kind,
            len_bytes: u64::from(len),
            max_bytes,
        });
    }
    Ok((kind_checked, len))
}

/// The header for a body of `len_bytes`, if the kind allows that length.
pub fn encode_header(kind: Kind, len_bytes: usize) -> Result<[u8; HEADER_BYTES]> {
    let max_bytes = kind
        .body_bytes_max()
        .ok_or(Error::FrameKind { kind: kind.0 })?;
    let len = u32::try_from(len_bytes)
        .ok()
        .filter(|len| *len <= max_bytes)
        .ok_or(Error::FrameTooLong {
            kind: kind.0,
            len_bytes: len_bytes as u64,
            max_bytes,
        })?;
    let [l0, l1, l2, l3] = len.to_le_bytes();
    Ok([FRAME_VERSION, kind.0, l0, l1, l2, l3])
}

/// A whole frame as bytes.
pub fn encode(kind: Kind, body: &[u8]) -> Result<Vec<u8>> {
    let header = encode_header(kind, body.len())?;
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    Ok(out)
}

/// Decodes exactly one frame from `bytes` (no trailing bytes).
pub fn decode(bytes: &[u8]) -> Result<Frame> {
    let (header, body) = bytes
        .split_first_chunk::<HEADER_BYTES>()
        .ok_or(Error::Frame {
            reason: "shorter than a header",
        })?;
    let (kind, len) = decode_header(header)?;
    if body.len() != len as usize {
        return Err(Error::Frame {
            reason: "body length differs from header",
        });
    }
    Ok(Frame {
        kind,
        body: body.to_vec(),
    })
}

/// Reads one frame from `recv`, all of it within `timeout`.
pub async fn read_frame(recv: &mut quinn::RecvStream, timeout: Duration) -> Result<Frame> {
    let read = async {
        let (kind, len) = read_header(recv).await?;
        let body = read_body(recv, len).await?;
        Ok(Frame { kind, body })
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| read_timeout(timeout))?
}

/// Reads and checks a frame header (no deadline: callers wrap one around it).
pub(crate) async fn read_header(recv: &mut quinn::RecvStream) -> Result<(Kind, u32)> {
    let mut header = [0u8; HEADER_BYTES];
    recv.read_exact(&mut header).await.map_err(read_error)?;
    decode_header(&header)
}

/// Reads a body of `len` bytes announced by a checked header.
pub(crate) async fn read_body(recv: &mut quinn::RecvStream, len: u32) -> Result<Vec<u8>> {
    // Grow with what actually arrives, so a header alone cannot make us allocate
    // the kind's maximum (flow control bounds what arrives).
    let len = len as usize;
    let mut body = Vec::with_capacity(len.min(READ_CHUNK_BYTES));
    while body.len() < len {
        let chunk = recv
            .read_chunk(len - body.len(), true)
            .await
            .map_err(|error| Error::Stream {
                reason: error.to_string(),
            })?
            .ok_or(Error::Stream {
                reason: "stream ended inside a frame".to_owned(),
            })?;
        body.extend_from_slice(&chunk.bytes);
    }
    Ok(body)
}

pub(crate) fn read_timeout(timeout: Duration) -> Error {
    Error::Timeout {
        what: "reading a frame",
        timeout_ms: duration_ms(timeout),
    }
}

/// Writes one frame to `send` within `timeout` (does not finish the stream).
pub async fn write_frame(
    send: &mut quinn::SendStream,
    kind: Kind,
    body: &[u8],
    timeout: Duration,
) -> Result<()> {
    let header = encode_header(kind, body.len())?;
    let write = async {
        send.write_all(&header).await.map_err(write_error)?;
        send.write_all(body).await.map_err(write_error)
    };
    tokio::time::timeout(timeout, write)
        .await
        .map_err(|_| Error::Timeout {
            what: "writing a frame",
            timeout_ms: duration_ms(timeout),
        })?
}

pub(crate) fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn read_error(error: quinn::ReadExactError) -> Error {
    Error::Stream {
        reason: match error {
            quinn::ReadExactError::FinishedEarly(_) => "stream ended inside a frame".to_owned(),
            quinn::ReadExactError::ReadError(error) => error.to_string(),
        },
    }
}

fn write_error(error: quinn::WriteError) -> Error {
    Error::Stream {
        reason: error.to_string(),
    }
}
