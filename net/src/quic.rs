//! QUIC transport between devices: quinn 0.11 + rustls 0.23 (ring), TLS 1.3 only.
//!
//! Authentication (crypto-design §3.2): each side presents its device Ed25519 key as
//! an RFC 7250 raw public key (no certificates, no CA). Both sides' verifiers ask the
//! caller's [`Trust`] whether the key is a live device of a known user and refuse
//! *inside the handshake* otherwise, so no request of an unknown or revoked device is
//! ever read. The dialler additionally pins the device it meant to reach. Session
//! resumption and 0-RTT are off: a resumed session would skip the verifiers, and early
//! data is replayable.
//!
//! After the handshake a [`Connection`] knows its authenticated peer ([`DeviceId`]).
//! A request is one frame on a fresh bidirectional stream answered by one frame; a
//! message is one frame on a unidirectional stream (see `frame`). Inbound requests and
//! messages reach the owner of the endpoint through a bounded channel of [`Inbound`].
//! Malformed or oversized frames reset that stream with an error code; the connection
//! and the endpoint carry on.
//!
//! The [`Endpoint`] also keeps one connection per device, knows devices' addresses
//! and re-dials with capped exponential backoff.
//!
//! Limits (§6.4): streams per connection, flow-control windows, idle timeout and
//! keep-alive are set in [`EndpointConfig`].
//!
//! ```
//! use std::sync::Arc;
//! use net::frame::Kind;
//! use net::identity::DeviceIdentity;
//! use net::quic::{Endpoint, TrustSet};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = tokio::runtime::Runtime::new()?;
//! runtime.block_on(async {
//!     let (laptop, desktop) = (DeviceIdentity::generate(), DeviceIdentity::generate());
//!     let any_port = "127.0.0.1:0".parse()?;
//!     let laptop_trusts = Arc::new(TrustSet::with_members([desktop.device_id()]));
//!     let desktop_trusts = Arc::new(TrustSet::with_members([laptop.device_id()]));
//!     let (a, _a_inbound) = Endpoint::bind(any_port, &laptop, laptop_trusts)?;
//!     let (b, mut b_inbound) = Endpoint::bind(any_port, &desktop, desktop_trusts)?;
//!     tokio::spawn(async move {
//!         while let Some(inbound) = b_inbound.recv().await {
//!             if let Some(responder) = inbound.responder {
//!                 responder.respond(Kind::ECHO, inbound.frame.body);
//!             }
//!         }
//!     });
//!     let connection = a.connect(b.local_addr()?, desktop.device_id()).await?;
//!     assert_eq!(connection.peer(), desktop.device_id());
//!     assert_eq!(connection.request(Kind::ECHO, b"hi").await?.body, b"hi");
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })
//! # }
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::frame::{self, Frame, Kind, duration_ms};
use crate::identity::{ChainState, DeviceId, DeviceIdentity};

/// Most [`Endpoint::send_detached`] messages in flight at once.
pub const DETACHED_SENDS_MAX: usize = 1024;
const WELCOME_MEMBER: u8 = 1;
const WELCOME_PAIRING_ONLY: u8 = 2;
/// ALPN protocol id.
pub const ALPN: &[u8] = b"kith/1";
/// Server name used when dialling; never sent (SNI is off), the key is pinned instead.
const SERVER_NAME: &str = "kith.invalid";
/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), followed by the 32-byte key.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410), followed by the 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Stream error codes sent when a stream is reset or stopped.
pub mod stream_code {
    /// The frame was malformed (bad version, kind or header).
    pub const MALFORMED: u32 = 1;
    /// The frame was longer than its kind allows.
    pub const TOO_LONG: u32 = 2;
    /// The frame did not arrive in time.
    pub const TIMEOUT: u32 = 3;
    /// The peer may not send this kind (e.g. a pairing-only peer).
    pub const REFUSED: u32 = 4;
    /// Nobody answered the request (handler gone, or too slow).
    pub const NO_ANSWER: u32 = 5;
    /// The endpoint is shutting down or overloaded.
    pub const BUSY: u32 = 6;
}

/// Connection close codes.
pub mod close_code {
    /// Normal close.
    pub const DONE: u32 = 0;
    /// The peer is no longer trusted (revoked).
    pub const UNTRUSTED: u32 = 1;
    /// Replaced by a newer connection to the same device.
    pub const REPLACED: u32 = 2;
}

/// What the transport may let a device do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// A live device of a known user: every frame kind.
    Member,
    /// Unknown device while a pairing code is open: [`Kind::PAIR`] requests only.
    PairingOnly,
    /// Refused in the handshake.
    Refused,
}

/// The caller's answer to "may this device connect?", asked inside every handshake.
pub trait Trust: Send + Sync + fmt::Debug {
    fn admit(&self, device: &DeviceId) -> Admission;
}

/// A simple [`Trust`]: a set of member devices, plus a switch that admits unknown
/// devices for pairing while a pairing code is open.
#[derive(Debug, Default)]
pub struct TrustSet {
    members: RwLock<HashSet<DeviceId>>,
    pairing_open: AtomicBool,
}

impl TrustSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_members(members: impl IntoIterator<Item = DeviceId>) -> Self {
        let set = Self::new();
        set.members.write().extend(members);
        set
    }

    pub fn insert(&self, device: DeviceId) {
        self.members.write().insert(device);
    }

    pub fn remove(&self, device: &DeviceId) {
        self.members.write().remove(device);
    }

    /// Replaces the members with the live devices of verified user chains.
    pub fn set_from_chains<'a>(&self, chains: impl IntoIterator<Item = &'a ChainState>) {
        let live: HashSet<DeviceId> = chains
            .into_iter()
            .flat_map(|state| state.devices.keys().copied())
            .collect();
        *self.members.write() = live;
    }

    pub fn set_pairing_open(&self, open: bool) {
        self.pairing_open.store(open, Ordering::SeqCst);
    }
}

impl Trust for TrustSet {
    fn admit(&self, device: &DeviceId) -> Admission {
        if self.members.read().contains(device) {
            Admission::Member
        } else if self.pairing_open.load(Ordering::SeqCst) {
            Admission::PairingOnly
        } else {
            Admission::Refused
        }
    }
}

/// Transport limits and timers.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// A connection silent this long is dead.
    pub idle_timeout: Duration,
    /// Ping this often so a live LAN peer never reaches the idle timeout.
    pub keep_alive: Duration,
    /// Handshake deadline.
    pub connect_timeout: Duration,
    /// Whole-request deadline (send, wait for the handler, answer).
    pub request_timeout: Duration,
    pub bidi_streams_max: u32,
    pub uni_streams_max: u32,
    pub stream_window_bytes: u32,
    pub connection_window_bytes: u32,
    /// First re-dial delay after a failed dial; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Inbound requests and messages queued for the owner before streams wait.
    pub inbound_queue_max: usize,
    /// Bytes of inbound frame bodies one connection may have in memory (read, not
    /// yet dropped by the owner); further frames wait. At least the largest frame.
    pub inbound_bytes_max_per_connection: u32,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(20),
            keep_alive: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            bidi_streams_max: 64,
            uni_streams_max: 16,
            stream_window_bytes: 2 << 20,
            connection_window_bytes: 16 << 20,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            inbound_queue_max: 256,
            inbound_bytes_max_per_connection: 2 * frame::FRAME_BODY_BYTES_MAX,
        }
    }
}

/// A request or message received from a peer.
#[derive(Debug)]
pub struct Inbound {
    pub peer: DeviceId,
    pub admission: Admission,
    pub frame: Frame,
    /// `Some` for a request: answer through it. Dropping it resets the stream.
    pub responder: Option<Responder>,
    /// The frame's share of its connection's inbound byte budget, returned on drop.
    _budget: OwnedSemaphorePermit,
}

/// Answers one request.
#[derive(Debug)]
pub struct Responder(oneshot::Sender<(Kind, Vec<u8>)>);

impl Responder {
    /// Sends `body` as the answer. Fails (silently) if the requester went away.
    pub fn respond(self, kind: Kind, body: Vec<u8>) {
        let _ = self.0.send((kind, body));
    }

    /// Answers with a [`Kind::ERROR`] frame carrying `reason` (truncated to fit).
    pub fn refuse(self, reason: &str) {
        let max = Kind::ERROR.body_bytes_max().unwrap_or(0) as usize;
        let mut end = reason.len().min(max);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.respond(
            Kind::ERROR,
            reason.as_bytes().get(..end).unwrap_or(&[]).to_vec(),
        );
    }
}

/// An authenticated connection to one device.
#[derive(Clone)]
pub struct Connection {
    quinn: quinn::Connection,
    peer: DeviceId,
    /// What we let the peer do on this connection.
    admission: Admission,
    /// What the peer let us do, when we dialled (from its welcome).
    granted: Option<Admission>,
    config: Arc<EndpointConfig>,
    /// Inbound body bytes this connection may hold in memory.
    inbound_budget: Arc<Semaphore>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("remote", &self.quinn.remote_address())
            .field("admission", &self.admission)
            .finish()
    }
}

impl Connection {
    /// The device authenticated in the handshake.
    pub fn peer(&self) -> DeviceId {
        self.peer
    }

    /// What this side lets the peer do.
    pub fn admission(&self) -> Admission {
        self.admission
    }

    /// What the peer lets this side do, for a connection this side dialled
    /// (`None` for accepted connections).
    pub fn granted_by_peer(&self) -> Option<Admission> {
        self.granted
    }

    pub fn remote_address(&self) -> SocketAddr {
        self.quinn.remote_address()
    }

    pub fn is_closed(&self) -> bool {
        self.quinn.close_reason().is_some()
    }

    /// Round-trip time as quinn estimates it.
    pub fn rtt(&self) -> Duration {
        self.quinn.rtt()
    }

    pub fn close(&self) {
        self.quinn.close(close_code::DONE.into(), b"closed");
    }

    /// The underlying quinn connection, for tests that must speak below the frame
    /// layer (malformed input). Not for normal use.
    #[doc(hidden)]
    pub fn quinn_connection(&self) -> &quinn::Connection {
        &self.quinn
    }

    /// Sends one request frame on a new stream and returns the answer frame. An
    /// [`Kind::ERROR`] answer becomes [`Error::Refused`].
    pub async fn request(&self, kind: Kind, body: &[u8]) -> Result<Frame> {
        let timeout = self.config.request_timeout;
        let exchange = async {
            let (mut send, mut recv) = self
                .quinn
                .open_bi()
                .await
                .map_err(|error| self.lost(error))?;
            frame::write_frame(&mut send, kind, body, timeout).await?;
            send.finish().map_err(|error| Error::Stream {
                reason: error.to_string(),
            })?;
            frame::read_frame(&mut recv, timeout).await
        };
        let answer = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| Error::Timeout {
                what: "request",
                timeout_ms: duration_ms(timeout),
            })??;
        if answer.kind == Kind::ERROR {
            return Err(Error::Refused {
                message: String::from_utf8_lossy(&answer.body).into_owned(),
            });
        }
        Ok(answer)
    }

    /// Sends one message frame on a new unidirectional stream.
    pub async fn send(&self, kind: Kind, body: &[u8]) -> Result<()> {
        let timeout = self.config.request_timeout;
        let exchange = async {
            let mut send = self
                .quinn
                .open_uni()
                .await
                .map_err(|error| self.lost(error))?;
            frame::write_frame(&mut send, kind, body, timeout).await?;
            send.finish().map_err(|error| Error::Stream {
                reason: error.to_string(),
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| Error::Timeout {
                what: "message",
                timeout_ms: duration_ms(timeout),
            })?
    }

    fn lost(&self, error: quinn::ConnectionError) -> Error {
        Error::Connection {
            peer: self.peer.fingerprint(),
            reason: error.to_string(),
        }
    }
}

/// A QUIC endpoint speaking for one device: accepts, dials, and keeps one
/// connection per peer device. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

struct Inner {
    quinn: quinn::Endpoint,
    device: DeviceId,
    certified: Arc<CertifiedKey>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    trust: Arc<dyn Trust>,
    config: Arc<EndpointConfig>,
    transport: Arc<quinn::TransportConfig>,
    inbound: mpsc::Sender<Inbound>,
    peers: Mutex<PeerTable>,
    runtime: tokio::runtime::Handle,
    detached: Arc<Semaphore>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("device", &self.device)
            .field("local", &self.quinn.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.quinn
            .close(close_code::DONE.into(), b"endpoint dropped");
    }
}

#[derive(Debug, Default)]
struct PeerTable {
    /// The connection used for each member device.
    connections: HashMap<DeviceId, Connection>,
    /// Other open connections: superseded ones and pairing-only ones.
    others: Vec<Connection>,
    addresses: HashMap<DeviceId, Vec<SocketAddr>>,
    backoff: HashMap<DeviceId, Backoff>,
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    next_attempt: Instant,
    delay: Duration,
}

impl Endpoint {
    /// Binds `addr` with default limits. Must run inside a tokio runtime. Returns the
    /// endpoint and the channel on which inbound requests and messages arrive.
    pub fn bind(
        addr: SocketAddr,
        identity: &DeviceIdentity,
        trust: Arc<dyn Trust>,
    ) -> Result<(Endpoint, mpsc::Receiver<Inbound>)> {
        Self::bind_with(addr, identity, trust, EndpointConfig::default())
    }

    /// [`bind`](Self::bind) with explicit limits.
    pub fn bind_with(
        addr: SocketAddr,
        identity: &DeviceIdentity,
        trust: Arc<dyn Trust>,
        config: EndpointConfig,
    ) -> Result<(Endpoint, mpsc::Receiver<Inbound>)> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::Config {
            reason: "Endpoint::bind needs a tokio runtime".into(),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = certified_key(identity, &provider)?;
        let transport = Arc::new(transport_config(&config)?);
        let config = Arc::new(config);

        let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .with_client_cert_verifier(Arc::new(ClientVerifier {
                trust: trust.clone(),
                provider: provider.clone(),
            }))
            .with_cert_resolver(Arc::new(
                rustls::server::AlwaysResolvesServerRawPublicKeys::new(certified.clone()),
            ));
        tls.alpn_protocols = vec![ALPN.to_vec()];
        tls.max_early_data_size = 0;
        tls.send_tls13_tickets = 0;
        tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        let quic_tls =
            quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(config_error)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic_tls));
        server.transport_config(transport.clone());

        let quinn = {
            let _guard = runtime.enter();
            let socket =
                std::net::UdpSocket::bind(addr).map_err(|source| Error::Bind { addr, source })?;
            let quinn_runtime = quinn::default_runtime().ok_or_else(|| Error::Config {
                reason: "no async runtime for quinn".into(),
            })?;
            let mut endpoint_config =
                quinn::EndpointConfig::new(Arc::new(ResetKey::for_device(identity)));
            // Connection ids a restarted device recognises as its own (else it drops
            // the packets of its previous incarnation's connections instead of resetting them).
            let cid_key = cid_key_for_device(identity);
            endpoint_config.cid_generator(move || {
                Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            });
            quinn::Endpoint::new(endpoint_config, Some(server), socket, quinn_runtime)
                .map_err(|source| Error::Bind { addr, source })?
        };
        let (inbound, inbound_rx) = mpsc::channel(config.inbound_queue_max.max(1));
        let inner = Arc::new(Inner {
            quinn: quinn.clone(),
            device: identity.device_id(),
            certified,
            provider,
            trust,
            config,
            transport,
            inbound,
            peers: Mutex::new(PeerTable::default()),
            runtime: runtime.clone(),
            detached: Arc::new(Semaphore::new(DETACHED_SENDS_MAX)),
        });
        runtime.spawn(accept_loop(quinn, Arc::downgrade(&inner)));
        Ok((Endpoint { inner }, inbound_rx))
    }

    pub fn device(&self) -> DeviceId {
        self.inner.device
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.inner
            .quinn
            .local_addr()
            .map_err(|error| Error::Config {
                reason: format!("local address: {error}"),
            })
    }

    /// Dials `addr` and checks that the server is `expected` (and trusted).
    pub async fn connect(&self, addr: SocketAddr, expected: DeviceId) -> Result<Connection> {
        let connection = self.dial(addr, expected).await?;
        self.inner.register(connection.clone());
        Ok(connection)
    }

    /// Remembers where `device` can be reached (from pairing or configuration).
    pub fn set_addresses(&self, device: DeviceId, addresses: Vec<SocketAddr>) {
        self.inner.peers.lock().addresses.insert(device, addresses);
    }

    /// The live connection to `device`, dialling its known addresses if there is none.
    /// After a failed dial, further dials wait out a backoff that doubles up to
    /// `backoff_max`; inside it this returns [`Error::Backoff`] at once.
    pub async fn connection(&self, device: DeviceId) -> Result<Connection> {
        let addresses = {
            let mut peers = self.inner.peers.lock();
            if let Some(connection) = peers.connections.get(&device) {
                if !connection.is_closed() {
                    return Ok(connection.clone());
                }
                peers.connections.remove(&device);
            }
            if let Some(backoff) = peers.backoff.get(&device) {
                let now = Instant::now();
                if now < backoff.next_attempt {
                    return Err(Error::Backoff {
                        device: device.fingerprint(),
                        retry_in_ms: duration_ms(backoff.next_attempt - now),
                    });
                }
            }
            peers.addresses.get(&device).cloned().unwrap_or_default()
        };
        if addresses.is_empty() {
            return Err(Error::NoAddress {
                device: device.fingerprint(),
            });
        }
        let mut last_error = None;
        for addr in addresses {
            match self.dial(addr, device).await {
                Ok(connection) => {
                    self.inner.peers.lock().backoff.remove(&device);
                    self.inner.register(connection.clone());
                    return Ok(connection);
                }
                Err(error) => last_error = Some(error),
            }
        }
        let mut peers = self.inner.peers.lock();
        let delay = peers
            .backoff
            .get(&device)
            .map(|backoff| (backoff.delay * 2).min(self.inner.config.backoff_max))
            .unwrap_or(self.inner.config.backoff_min);
        peers.backoff.insert(
            device,
            Backoff {
                next_attempt: Instant::now() + delay,
                delay,
            },
        );
        Err(last_error.unwrap_or(Error::NoAddress {
            device: device.fingerprint(),
        }))
    }

    /// Like [`connection`](Self::connection) but waits out backoffs and retries until
    /// `deadline` passes.
    pub async fn connection_until(
        &self,
        device: DeviceId,
        deadline: Instant,
    ) -> Result<Connection> {
        let started = Instant::now();
        loop {
            match self.connection(device).await {
                Ok(connection) => return Ok(connection),
                Err(Error::Backoff { retry_in_ms, .. }) => {
                    let wake = Instant::now() + Duration::from_millis(retry_in_ms);
                    if wake >= deadline {
                        return Err(Error::Timeout {
                            what: "reaching the device",
                            timeout_ms: duration_ms(deadline.saturating_duration_since(started)),
                        });
                    }
                    tokio::time::sleep_until(wake.into()).await;
                }
                Err(error) if error.is_retryable() => {
                    if Instant::now() >= deadline {
                        tracing::debug!(%device, %error, "device still unreachable at the deadline");
                        return Err(Error::Timeout {
                            what: "reaching the device",
                            timeout_ms: duration_ms(deadline.saturating_duration_since(started)),
                        });
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Sends a request to `device` over its connection; if that connection turns out
    /// to be dead (peer restarted), dials once more and retries.
    pub async fn request(&self, device: DeviceId, kind: Kind, body: &[u8]) -> Result<Frame> {
        let connection = self.connection(device).await?;
        match connection.request(kind, body).await {
            Err(error) if connection.is_closed() || matches!(error, Error::Connection { .. }) => {
                self.inner.forget(&connection);
                self.connection(device).await?.request(kind, body).await
            }
            other => other,
        }
    }

    /// Sends a one-way message to `device` without waiting: dials if needed, on a task
    /// of the endpoint's runtime. For traffic that tolerates loss and reordering (Paxos):
    /// the message is dropped, with a debug log, when the device is unreachable or when
    /// [`DETACHED_SENDS_MAX`] sends are already in flight. Returns whether it was queued.
    pub fn send_detached(&self, device: DeviceId, kind: Kind, body: Vec<u8>) -> bool {
        let Ok(permit) = self.inner.detached.clone().try_acquire_owned() else {
            tracing::debug!(%device, "too many detached sends in flight; message dropped");
            return false;
        };
        let endpoint = self.clone();
        self.inner.runtime.spawn(async move {
            let sent = async {
                let connection = endpoint.connection(device).await?;
                connection.send(kind, &body).await
            };
            if let Err(error) = sent.await {
                tracing::debug!(%device, %error, "detached message dropped");
            }
            drop(permit);
        });
        true
    }

    /// The current connection to `device`, if any.
    pub fn existing_connection(&self, device: &DeviceId) -> Option<Connection> {
        self.inner
            .peers
            .lock()
            .connections
            .get(device)
            .filter(|connection| !connection.is_closed())
            .cloned()
    }

    /// Closes connections of devices the [`Trust`] no longer admits as members
    /// (call after a revocation).
    pub fn refresh_trust(&self) {
        let trust = &self.inner.trust;
        let still_admitted = |connection: &Connection| {
            let keep = trust.admit(&connection.peer) == connection.admission;
            if !keep {
                connection
                    .quinn
                    .close(close_code::UNTRUSTED.into(), b"no longer trusted");
            }
            keep
        };
        let mut peers = self.inner.peers.lock();
        peers
            .connections
            .retain(|_, connection| still_admitted(connection));
        peers.others.retain(|connection| still_admitted(connection));
    }

    /// Closes the endpoint and waits (briefly) for connections to finish closing.
    pub async fn close(&self) {
        self.inner.quinn.close(close_code::DONE.into(), b"closing");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.quinn.wait_idle()).await;
        let mut peers = self.inner.peers.lock();
        peers.connections.clear();
        peers.others.clear();
    }

    async fn dial(&self, addr: SocketAddr, expected: DeviceId) -> Result<Connection> {
        let inner = &self.inner;
        let mut tls = rustls::ClientConfig::builder_with_provider(inner.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier {
                expected,
                trust: inner.trust.clone(),
                provider: inner.provider.clone(),
            }))
            .with_client_cert_resolver(Arc::new(
                rustls::client::AlwaysResolvesClientRawPublicKeys::new(inner.certified.clone()),
            ));
        tls.alpn_protocols = vec![ALPN.to_vec()];
        tls.enable_sni = false;
        tls.enable_early_data = false;
        tls.resumption = rustls::client::Resumption::disabled();
        let quic_tls =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(config_error)?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic_tls));
        client.transport_config(inner.transport.clone());
        let peer_name = expected.fingerprint();
        let connecting = inner
            .quinn
            .connect_with(client, addr, SERVER_NAME)
            .map_err(|error| Error::Connection {
                peer: peer_name.clone(),
                reason: error.to_string(),
            })?;
        let quinn_connection = tokio::time::timeout(inner.config.connect_timeout, connecting)
            .await
            .map_err(|_| Error::Timeout {
                what: "handshake",
                timeout_ms: duration_ms(inner.config.connect_timeout),
            })?
            .map_err(|error| Error::Connection {
                peer: peer_name.clone(),
                reason: error.to_string(),
            })?;
        let peer = peer_device(&quinn_connection)?;
        if peer != expected {
            quinn_connection.close(close_code::UNTRUSTED.into(), b"unexpected device");
            return Err(Error::Connection {
                peer: peer_name,
                reason: "server is not the expected device".into(),
            });
        }
        // What the server granted us (a pairing joiner learns it is pairing-only).
        let granted = match await_welcome(&quinn_connection, inner.config.connect_timeout).await {
            Ok(granted) => granted,
            Err(error) => {
                quinn_connection.close(close_code::DONE.into(), b"no welcome");
                return Err(error);
            }
        };
        let connection = Connection {
            quinn: quinn_connection,
            peer,
            admission: inner.trust.admit(&peer),
            granted: Some(granted),
            config: inner.config.clone(),
            inbound_budget: inner.new_inbound_budget(),
        };
        tokio::spawn(serve_connection(connection.clone(), inner.inbound.clone()));
        Ok(connection)
    }
}

impl Inner {
    fn new_inbound_budget(&self) -> Arc<Semaphore> {
        let bytes = self
            .config
            .inbound_bytes_max_per_connection
            .max(frame::FRAME_BODY_BYTES_MAX);
        Arc::new(Semaphore::new(bytes as usize))
    }

    /// Makes a member's `connection` the one used for its peer. Superseded and
    /// pairing-only connections stay open (requests in flight finish) but are kept
    /// in `others` so a change of trust can still close them.
    fn register(&self, connection: Connection) {
        let mut peers = self.peers.lock();
        peers.others.retain(|other| !other.is_closed());
        if connection.admission != Admission::Member {
            peers.others.push(connection);
            return;
        }
        if let Some(previous) = peers
            .connections
            .insert(connection.peer, connection.clone())
            && previous.quinn.stable_id() != connection.quinn.stable_id()
            && !previous.is_closed()
        {
            peers.others.push(previous);
        }
    }

    fn forget(&self, connection: &Connection) {
        let mut peers = self.peers.lock();
        if peers
            .connections
            .get(&connection.peer)
            .is_some_and(|current| current.quinn.stable_id() == connection.quinn.stable_id())
        {
            peers.connections.remove(&connection.peer);
        }
    }
}

async fn accept_loop(quinn: quinn::Endpoint, inner: Weak<Inner>) {
    while let Some(incoming) = quinn.accept().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            let timeout = strong.config.connect_timeout;
            drop(strong);
            let quinn_connection = match tokio::time::timeout(timeout, incoming).await {
                Ok(Ok(connection)) => connection,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "inbound handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("inbound handshake timed out");
                    return;
                }
            };
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let peer = match peer_device(&quinn_connection) {
                Ok(peer) => peer,
                Err(error) => {
                    tracing::debug!(%error, "inbound connection without a device key");
                    quinn_connection.close(close_code::UNTRUSTED.into(), b"no device key");
                    return;
                }
            };
            // Asked again: the verifier's answer is not carried over by rustls.
            let admission = inner.trust.admit(&peer);
            if admission == Admission::Refused {
                quinn_connection.close(close_code::UNTRUSTED.into(), b"not trusted");
                return;
            }
            let connection = Connection {
                quinn: quinn_connection,
                peer,
                admission,
                granted: None,
                config: inner.config.clone(),
                inbound_budget: inner.new_inbound_budget(),
            };
            if let Err(error) = welcome(&connection).await {
                tracing::debug!(%peer, %error, "could not welcome an accepted device");
                return;
            }
            inner.register(connection.clone());
            let inbound = inner.inbound.clone();
            drop(inner);
            serve_connection(connection, inbound).await;
        });
    }
}

/// Tells a dialler it was accepted, and as what.
async fn welcome(connection: &Connection) -> Result<()> {
    let timeout = connection.config.connect_timeout;
    let mut send = connection
        .quinn
        .open_uni()
        .await
        .map_err(|error| connection.lost(error))?;
    let granted = match connection.admission {
        Admission::Member => WELCOME_MEMBER,
        _ => WELCOME_PAIRING_ONLY,
    };
    frame::write_frame(&mut send, Kind::WELCOME, &[granted], timeout).await?;
    send.finish().map_err(|error| Error::Stream {
        reason: error.to_string(),
    })
}

/// Waits for the server's welcome: only then has it accepted our key.
async fn await_welcome(
    quinn_connection: &quinn::Connection,
    timeout: Duration,
) -> Result<Admission> {
    let wait = async {
        let mut recv = quinn_connection
            .accept_uni()
            .await
            .map_err(|error| Error::Connection {
                peer: quinn_connection.remote_address().to_string(),
                reason: format!("refused by the server: {error}"),
            })?;
        let frame = frame::read_frame(&mut recv, timeout).await?;
        match (frame.kind, frame.body.as_slice()) {
            (Kind::WELCOME, [WELCOME_MEMBER]) => Ok(Admission::Member),
            (Kind::WELCOME, [WELCOME_PAIRING_ONLY]) => Ok(Admission::PairingOnly),
            _ => Err(Error::Frame {
                reason: "expected a welcome frame",
            }),
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| Error::Timeout {
            what: "waiting for the server to accept",
            timeout_ms: duration_ms(timeout),
        })?
}

/// Serves the streams a peer opens on `connection` until it closes.
async fn serve_connection(connection: Connection, inbound: mpsc::Sender<Inbound>) {
    loop {
        tokio::select! {
            stream = connection.quinn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    tokio::spawn(serve_request(connection.clone(), send, recv, inbound.clone()));
                }
                Err(_) => break,
            },
            stream = connection.quinn.accept_uni() => match stream {
                Ok(recv) => {
                    tokio::spawn(serve_message(connection.clone(), recv, inbound.clone()));
                }
                Err(_) => break,
            },
        }
    }
}

async fn serve_request(
    connection: Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    inbound: mpsc::Sender<Inbound>,
) {
    let timeout = connection.config.request_timeout;
    let fail = |send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, code: u32| {
        let _ = recv.stop(code.into());
        let _ = send.reset(code.into());
    };
    let (frame, budget) = match read_budgeted(&connection, &mut recv).await {
        Ok(read) => read,
        Err(error) => {
            tracing::debug!(peer = %connection.peer, %error, "bad request frame");
            fail(&mut send, &mut recv, error_code(&error));
            return;
        }
    };
    let (reply, answer) = oneshot::channel();
    let delivered = inbound.send_timeout(
        Inbound {
            peer: connection.peer,
            admission: connection.admission,
            frame,
            responder: Some(Responder(reply)),
            _budget: budget,
        },
        timeout,
    );
    if delivered.await.is_err() {
        fail(&mut send, &mut recv, stream_code::BUSY);
        return;
    }
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok((kind, body))) => {
            if frame::write_frame(&mut send, kind, &body, timeout)
                .await
                .is_ok()
            {
                let _ = send.finish();
            } else {
                fail(&mut send, &mut recv, stream_code::MALFORMED);
            }
        }
        _ => fail(&mut send, &mut recv, stream_code::NO_ANSWER),
    }
}

async fn serve_message(
    connection: Connection,
    mut recv: quinn::RecvStream,
    inbound: mpsc::Sender<Inbound>,
) {
    let timeout = connection.config.request_timeout;
    let (frame, budget) = match read_budgeted(&connection, &mut recv).await {
        Ok(read) => read,
        Err(error) => {
            tracing::debug!(peer = %connection.peer, %error, "bad message frame");
            let _ = recv.stop(error_code(&error).into());
            return;
        }
    };
    let message = Inbound {
        peer: connection.peer,
        admission: connection.admission,
        frame,
        responder: None,
        _budget: budget,
    };
    if inbound.send_timeout(message, timeout).await.is_err() {
        tracing::debug!(peer = %connection.peer, "inbound queue full or closed; message dropped");
    }
}

/// Reads one inbound frame within the request deadline: checks the header, refuses
/// kinds the peer may not send, then takes the body's size from the connection's
/// byte budget before reading it (so a member flooding large frames waits).
async fn read_budgeted(
    connection: &Connection,
    recv: &mut quinn::RecvStream,
) -> Result<(Frame, OwnedSemaphorePermit)> {
    let timeout = connection.config.request_timeout;
    let read = async {
        let (kind, len) = frame::read_header(recv).await?;
        if !allowed(connection.admission, kind) {
            return Err(Error::Refused {
                message: "frame kind not allowed for this peer".into(),
            });
        }
        let budget = connection
            .inbound_budget
            .clone()
            .acquire_many_owned(len)
            .await
            .map_err(|_| Error::EndpointClosed)?;
        let body = frame::read_body(recv, len).await?;
        Ok((Frame { kind, body }, budget))
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| frame::read_timeout(timeout))?
}

fn allowed(admission: Admission, kind: Kind) -> bool {
    match admission {
        Admission::Member => true,
        Admission::PairingOnly => kind == Kind::PAIR,
        Admission::Refused => false,
    }
}

fn error_code(error: &Error) -> u32 {
    match error {
        Error::FrameTooLong { .. } => stream_code::TOO_LONG,
        Error::Timeout { .. } => stream_code::TIMEOUT,
        Error::Refused { .. } => stream_code::REFUSED,
        _ => stream_code::MALFORMED,
    }
}

fn transport_config(config: &EndpointConfig) -> Result<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout).map_err(config_error)?;
    transport
        .max_concurrent_bidi_streams(config.bidi_streams_max.into())
        .max_concurrent_uni_streams(config.uni_streams_max.into())
        .stream_receive_window(config.stream_window_bytes.into())
        .receive_window(config.connection_window_bytes.into())
        .send_window(u64::from(config.connection_window_bytes))
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.keep_alive));
    Ok(transport)
}

fn certified_key(
    identity: &DeviceIdentity,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Arc<CertifiedKey>> {
    let mut pkcs8 = Zeroizing::new(Vec::with_capacity(48));
    pkcs8.extend_from_slice(&ED25519_PKCS8_PREFIX);
    pkcs8.extend_from_slice(identity.sign_seed().as_ref());
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(config_error)?;
    let spki = device_spki(&identity.device_id());
    Ok(Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(spki)],
        signing_key,
    )))
}

/// The SubjectPublicKeyInfo DER of a device key (what RFC 7250 puts on the wire).
pub fn device_spki(device: &DeviceId) -> Vec<u8> {
    let mut spki = Vec::with_capacity(44);
    spki.extend_from_slice(&ED25519_SPKI_PREFIX);
    spki.extend_from_slice(device.as_bytes());
    spki
}

/// The device key in an Ed25519 SubjectPublicKeyInfo; anything else is refused.
pub fn device_from_spki(spki: &[u8]) -> Option<DeviceId> {
    let key = spki.strip_prefix(ED25519_SPKI_PREFIX.as_slice())?;
    let key: [u8; 32] = key.try_into().ok()?;
    Some(DeviceId::from_bytes(key))
}

fn peer_device(connection: &quinn::Connection) -> Result<DeviceId> {
    let missing = || Error::Connection {
        peer: connection.remote_address().to_string(),
        reason: "peer presented no Ed25519 device key".into(),
    };
    let identity = connection.peer_identity().ok_or_else(missing)?;
    let certificates = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| missing())?;
    match certificates.as_slice() {
        [spki] => device_from_spki(spki.as_ref()).ok_or_else(missing),
        _ => Err(missing()),
    }
}

fn config_error(error: impl fmt::Display) -> Error {
    Error::Config {
        reason: error.to_string(),
    }
}

fn refuse(reason: rustls::CertificateError) -> rustls::Error {
    rustls::Error::InvalidCertificate(reason)
}

/// Verifies a TLS 1.3 handshake signature made with a raw Ed25519 key.
fn verify_signature(
    provider: &rustls::crypto::CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 || device_from_spki(cert.as_ref()).is_none() {
        return Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::NoSignatureSchemesInCommon,
        ));
    }
    rustls::crypto::verify_tls13_signature_with_raw_key(
        message,
        &rustls::pki_types::SubjectPublicKeyInfoDer::from(cert.as_ref()),
        dss,
        &provider.signature_verification_algorithms,
    )
}

/// Key for QUIC stateless resets, derived from the device key so that a restarted
/// device (same key, same address) can reset connections its previous incarnation
/// left behind (e.g. after `kill -9`): peers then notice at their next packet instead
/// of after the idle timeout. Keyed BLAKE3 as the MAC.
struct ResetKey(Zeroizing<[u8; 32]>);

impl ResetKey {
    const CONTEXT: &'static str = "kith 2026-01-01 quic stateless reset v1";

    fn for_device(identity: &DeviceIdentity) -> Self {
        Self(Zeroizing::new(blake3::derive_key(
            Self::CONTEXT,
            identity.sign_seed().as_ref(),
        )))
    }
}

/// Key of the connection-id filter (not a secret that protects anything: the reset
/// token does that), stable across restarts of a device.
fn cid_key_for_device(identity: &DeviceIdentity) -> u64 {
    let key = blake3::derive_key(
        "kith 2026-01-01 quic connection id v1",
        identity.sign_seed().as_ref(),
    );
    let mut first = [0u8; 8];
    first.copy_from_slice(key.get(..8).unwrap_or(&[0; 8]));
    u64::from_le_bytes(first)
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let tag = blake3::keyed_hash(&self.0, data);
        for (out, byte) in signature_out.iter_mut().zip(tag.as_bytes()) {
            *out = *byte;
        }
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(
        &self,
        data: &[u8],
        signature: &[u8],
    ) -> std::result::Result<(), quinn::crypto::CryptoError> {
        let tag = blake3::keyed_hash(&self.0, data);
        // `Hash == [u8; 32]` compares in constant time.
        match <[u8; 32]>::try_from(signature) {
            Ok(signature) if tag == signature => Ok(()),
            _ => Err(quinn::crypto::CryptoError),
        }
    }
}

/// Server side: the client must present a raw key the [`Trust`] admits.
struct ClientVerifier {
    trust: Arc<dyn Trust>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientVerifier")
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(refuse(rustls::CertificateError::BadEncoding));
        }
        let device = device_from_spki(end_entity.as_ref())
            .ok_or_else(|| refuse(rustls::CertificateError::BadEncoding))?;
        match self.trust.admit(&device) {
            Admission::Refused => {
                tracing::debug!(%device, "refused an untrusted device in the handshake");
                Err(refuse(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
            Admission::Member | Admission::PairingOnly => Ok(ClientCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// Client side: the server must be the device we dialled, and still trusted.
struct ServerVerifier {
    expected: DeviceId,
    trust: Arc<dyn Trust>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl fmt::Debug for ServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerVerifier")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(refuse(rustls::CertificateError::BadEncoding));
        }
        let device = device_from_spki(end_entity.as_ref())
            .ok_or_else(|| refuse(rustls::CertificateError::BadEncoding))?;
        if device != self.expected {
            tracing::debug!(%device, expected = %self.expected, "server is another device");
            return Err(refuse(rustls::CertificateError::NotValidForName));
        }
        // A pairing joiner dials a device it does not trust yet: allowed only while
        // its own trust says pairing is open.
        match self.trust.admit(&device) {
            Admission::Refused => Err(refuse(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            Admission::Member | Admission::PairingOnly => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}
