//! Real QUIC on 127.0.0.1: mutual raw-key authentication, refusal inside the
//! handshake, framing errors, reconnects, pairing-only admission.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use net::Error;
use net::frame::{self, Kind};
use net::identity::{DeviceId, DeviceIdentity, LinkBody, UserChain, UserRootKey};
use net::quic::{Admission, Endpoint, EndpointConfig, Inbound, Trust, TrustSet, stream_code};
use tokio::sync::mpsc;

const LOCALHOST: &str = "127.0.0.1:0";

/// A Trust that counts how often the handshake asked it.
#[derive(Debug)]
struct Counting {
    inner: TrustSet,
    asked: AtomicUsize,
}

impl Trust for Counting {
    fn admit(&self, device: &DeviceId) -> Admission {
        self.asked.fetch_add(1, Ordering::SeqCst);
        self.inner.admit(device)
    }
}

fn config() -> EndpointConfig {
    EndpointConfig {
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(3),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        ..EndpointConfig::default()
    }
}

/// Answers ECHO with the body, PAIR with "paired", anything else with an error frame.
/// Every inbound item is also forwarded to `seen` so tests can check what arrived.
fn serve(
    mut inbound: mpsc::Receiver<Inbound>,
) -> mpsc::UnboundedReceiver<(DeviceId, Admission, Kind, usize)> {
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(item) = inbound.recv().await {
            let _ = seen_tx.send((
                item.peer,
                item.admission,
                item.frame.kind,
                item.frame.body.len(),
            ));
            if let Some(responder) = item.responder {
                match item.frame.kind {
                    Kind::ECHO => responder.respond(Kind::ECHO, item.frame.body),
                    Kind::PAIR => responder.respond(Kind::PAIR, b"paired".to_vec()),
                    _ => responder.refuse("unsupported"),
                }
            }
        }
    });
    seen_rx
}

struct Node {
    identity: DeviceIdentity,
    trust: Arc<TrustSet>,
    endpoint: Endpoint,
    seen: mpsc::UnboundedReceiver<(DeviceId, Admission, Kind, usize)>,
}

impl Node {
    fn start(trusted: &[DeviceId]) -> Node {
        Self::start_at(
            DeviceIdentity::generate(),
            LOCALHOST.parse().unwrap(),
            trusted,
        )
    }

    fn start_at(identity: DeviceIdentity, addr: SocketAddr, trusted: &[DeviceId]) -> Node {
        let trust = Arc::new(TrustSet::with_members(trusted.iter().copied()));
        let (endpoint, inbound) =
            Endpoint::bind_with(addr, &identity, trust.clone(), config()).unwrap();
        Node {
            identity,
            trust,
            endpoint,
            seen: serve(inbound),
        }
    }

    fn id(&self) -> DeviceId {
        self.identity.device_id()
    }

    fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap()
    }
}

/// Two nodes that trust each other.
fn pair() -> (Node, Node) {
    let a = Node::start(&[]);
    let b = Node::start(&[a.id()]);
    a.trust.insert(b.id());
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_endpoints_exchange_requests_both_ways() {
    let (a, mut b) = pair();
    let connection = a.endpoint.connect(b.addr(), b.id()).await.unwrap();
    assert_eq!(connection.peer(), b.id());
    assert_eq!(connection.admission(), Admission::Member);
    assert_eq!(connection.granted_by_peer(), Some(Admission::Member));

    let answer = connection.request(Kind::ECHO, b"ping").await.unwrap();
    assert_eq!(answer.kind, Kind::ECHO);
    assert_eq!(answer.body, b"ping");
    let (peer, admission, kind, len) = b.seen.recv().await.unwrap();
    assert_eq!(
        (peer, admission, kind, len),
        (a.id(), Admission::Member, Kind::ECHO, 4)
    );

    // Refusals travel as typed errors.
    let refused = connection.request(Kind::PAXOS, b"x").await;
    assert!(matches!(refused, Err(Error::Refused { ref message }) if message == "unsupported"));
    b.seen.recv().await.unwrap();

    // One-way message.
    connection.send(Kind::ECHO, &[9; 1000]).await.unwrap();
    let (peer, _, kind, len) = b.seen.recv().await.unwrap();
    assert_eq!((peer, kind, len), (a.id(), Kind::ECHO, 1000));

    // Fire-and-forget, by device id over the registered connection.
    a.endpoint.set_addresses(b.id(), vec![b.addr()]);
    assert!(a.endpoint.send_detached(b.id(), Kind::PAXOS, vec![4; 300]));
    let (peer, _, kind, len) = b.seen.recv().await.unwrap();
    assert_eq!((peer, kind, len), (a.id(), Kind::PAXOS, 300));

    // B reaches A over the connection A opened, learned by device id.
    let deadline = Instant::now() + Duration::from_secs(3);
    let back = loop {
        if let Some(connection) = b.endpoint.existing_connection(&a.id()) {
            break connection;
        }
        assert!(
            Instant::now() < deadline,
            "accepted connection never registered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(back.peer(), a.id());
    let answer = b
        .endpoint
        .request(a.id(), Kind::ECHO, &[1; 70_000])
        .await
        .unwrap();
    assert_eq!(answer.body, vec![1; 70_000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_client_refused_in_handshake() {
    let a = Node::start(&[]);
    let counting = Arc::new(Counting {
        inner: TrustSet::new(),
        asked: AtomicUsize::new(0),
    });
    let b_identity = DeviceIdentity::generate();
    let (b_endpoint, b_inbound) = Endpoint::bind_with(
        LOCALHOST.parse().unwrap(),
        &b_identity,
        counting.clone(),
        config(),
    )
    .unwrap();
    let mut b_seen = serve(b_inbound);
    a.trust.insert(b_identity.device_id());

    let result = a
        .endpoint
        .connect(b_endpoint.local_addr().unwrap(), b_identity.device_id())
        .await;
    assert!(
        matches!(result, Err(Error::Connection { .. })),
        "{result:?}"
    );
    assert!(
        counting.asked.load(Ordering::SeqCst) >= 1,
        "verifier was not consulted"
    );
    // Nothing was read from the refused device.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(b_seen.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_server_refused_in_handshake() {
    let a = Node::start(&[]);
    let mut b = Node::start(&[a.id()]);
    // A does not trust B, although B would accept A.
    let result = a.endpoint.connect(b.addr(), b.id()).await;
    assert!(
        matches!(result, Err(Error::Connection { .. })),
        "{result:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(b.seen.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_with_another_key_refused() {
    let (a, b) = pair();
    let c = DeviceIdentity::generate();
    a.trust.insert(c.device_id());
    // Dial B's address expecting C: B's key is not the one pinned.
    let result = a.endpoint.connect(b.addr(), c.device_id()).await;
    assert!(
        matches!(result, Err(Error::Connection { .. })),
        "{result:?}"
    );
    // The right key still works.
    a.endpoint.connect(b.addr(), b.id()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_device_refused() {
    let root = UserRootKey::generate();
    let mut chain = UserChain::new(root.user_id());
    let a_identity = DeviceIdentity::generate();
    let b_identity = DeviceIdentity::generate();
    for (device, name) in [(&a_identity, "a"), (&b_identity, "b")] {
        let proof = device.possession_proof(&root.user_id(), name);
        chain
            .append(
                &root,
                LinkBody::AddDevice {
                    device: device.public(),
                    name: name.into(),
                    proof,
                },
            )
            .unwrap();
    }
    let state = chain.verify().unwrap();
    let a = Node::start_at(a_identity, LOCALHOST.parse().unwrap(), &[]);
    let b = Node::start_at(b_identity, LOCALHOST.parse().unwrap(), &[]);
    a.trust.set_from_chains([&state]);
    b.trust.set_from_chains([&state]);

    let connection = a.endpoint.connect(b.addr(), b.id()).await.unwrap();
    connection.request(Kind::ECHO, b"before").await.unwrap();

    // Revoke A; B learns the new chain.
    let state = chain
        .append(&root, LinkBody::RevokeDevice { device: a.id() })
        .unwrap();
    b.trust.set_from_chains([&state]);
    b.endpoint.refresh_trust();
    // The existing connection is closed by B...
    let deadline = Instant::now() + Duration::from_secs(3);
    while !connection.is_closed() {
        assert!(
            Instant::now() < deadline,
            "revoked peer's connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...and a new one is refused in the handshake.
    let again = a.endpoint.connect(b.addr(), b.id()).await;
    assert!(matches!(again, Err(Error::Connection { .. })), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_end_the_stream_not_the_endpoint() {
    let (a, b) = pair();
    let connection = a.endpoint.connect(b.addr(), b.id()).await.unwrap();
    let quinn = connection.quinn_connection();

    let header = |version: u8, kind: u8, len: u32| {
        let mut bytes = vec![version, kind];
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes
    };
    let cases: Vec<(Vec<u8>, u32)> = vec![
        (header(9, Kind::ECHO.as_u8(), 4), stream_code::MALFORMED), // wrong version
        (header(1, 250, 4), stream_code::MALFORMED),                // unknown kind
        (
            header(1, Kind::ECHO.as_u8(), u32::MAX),
            stream_code::TOO_LONG,
        ), // oversized
        (header(1, Kind::PAIR.as_u8(), 5000), stream_code::TOO_LONG), // over this kind's bound
        (
            [header(1, Kind::ECHO.as_u8(), 100), vec![0; 10]].concat(),
            stream_code::MALFORMED,
        ), // ends early
        (vec![1, 7], stream_code::MALFORMED),                       // truncated header
    ];
    for (bytes, expected_code) in cases {
        let (mut send, mut recv) = quinn.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        let _ = send.finish();
        let outcome = tokio::time::timeout(Duration::from_secs(3), recv.read_to_end(1 << 20))
            .await
            .expect("server neither answered nor reset");
        match outcome {
            Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
                assert_eq!(code, expected_code.into(), "for input {bytes:?}")
            }
            other => panic!("expected a reset for {bytes:?}, got {other:?}"),
        }
    }
    // The same connection still serves well-formed requests...
    let answer = connection.request(Kind::ECHO, b"still here").await.unwrap();
    assert_eq!(answer.body, b"still here");
    // ...and so does the endpoint for another peer.
    let c = Node::start(&[b.id()]);
    b.trust.insert(c.id());
    let other = c.endpoint.connect(b.addr(), b.id()).await.unwrap();
    assert_eq!(other.request(Kind::ECHO, b"c").await.unwrap().body, b"c");
    // A well-formed frame written by hand is accepted too.
    let (mut send, mut recv) = quinn.open_bi().await.unwrap();
    send.write_all(&frame::encode(Kind::ECHO, b"raw").unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    let reply = recv.read_to_end(1 << 10).await.unwrap();
    assert_eq!(frame::decode(&reply).unwrap().body, b"raw");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_after_peer_restart() {
    let a = Node::start(&[]);
    let (sign, kem): ([u8; 32], [u8; 32]) = (rand::random(), rand::random());
    let b_id = DeviceIdentity::from_secrets(&sign, &kem).device_id();
    let b = Node::start_at(
        DeviceIdentity::from_secrets(&sign, &kem),
        LOCALHOST.parse().unwrap(),
        &[a.id()],
    );
    let b_addr = b.addr();
    a.trust.insert(b.id());
    a.endpoint.set_addresses(b.id(), vec![b_addr]);
    a.endpoint
        .request(b.id(), Kind::ECHO, b"one")
        .await
        .unwrap();

    // B goes away: dials fail, then back off.
    b.endpoint.close().await;
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match a.endpoint.request(b_id, Kind::ECHO, b"down").await {
            Err(Error::Backoff { .. }) => break,
            Err(_) => {}
            Ok(_) => panic!("request succeeded while the peer was down"),
        }
        assert!(Instant::now() < deadline, "never backed off");
    }

    // B restarts on the same port with the same key.
    let b = loop {
        let identity = DeviceIdentity::from_secrets(&sign, &kem);
        let trust = Arc::new(TrustSet::with_members([a.id()]));
        match Endpoint::bind_with(b_addr, &identity, trust.clone(), config()) {
            Ok((endpoint, inbound)) => {
                break Node {
                    identity,
                    trust,
                    endpoint,
                    seen: serve(inbound),
                };
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(error) => panic!("could not rebind: {error}"),
        }
    };
    assert_eq!(b.id(), b_id);
    let connection = a
        .endpoint
        .connection_until(b_id, Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        connection.request(Kind::ECHO, b"two").await.unwrap().body,
        b"two"
    );
    assert_eq!(
        a.endpoint
            .request(b_id, Kind::ECHO, b"three")
            .await
            .unwrap()
            .body,
        b"three"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_only_peer_may_only_pair() {
    let mut a = Node::start(&[]);
    let b = Node::start(&[]);
    // A has a pairing code open; B (the joiner) knows A's id from the code.
    a.trust.set_pairing_open(true);
    b.trust.insert(a.id());
    let connection = b.endpoint.connect(a.addr(), a.id()).await.unwrap();
    assert_eq!(connection.granted_by_peer(), Some(Admission::PairingOnly));
    let refused = connection.request(Kind::ECHO, b"sneak").await;
    assert!(matches!(refused, Err(Error::Stream { .. })), "{refused:?}");
    let answer = connection.request(Kind::PAIR, b"join").await.unwrap();
    assert_eq!(answer.body, b"paired");
    let (peer, admission, kind, _) = a.seen.recv().await.unwrap();
    assert_eq!(
        (peer, admission, kind),
        (b.id(), Admission::PairingOnly, Kind::PAIR)
    );
    // With pairing closed again, the unknown device is refused in the handshake.
    a.trust.set_pairing_open(false);
    let c = Node::start(&[a.id()]);
    assert!(c.endpoint.connect(a.addr(), a.id()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_frame_times_out_and_endpoint_carries_on() {
    let a = Node::start(&[]);
    let b_identity = DeviceIdentity::generate();
    let b_trust = Arc::new(TrustSet::with_members([a.id()]));
    let quick = EndpointConfig {
        request_timeout: Duration::from_millis(300),
        ..config()
    };
    let (b_endpoint, b_inbound) =
        Endpoint::bind_with(LOCALHOST.parse().unwrap(), &b_identity, b_trust, quick).unwrap();
    let _b_seen = serve(b_inbound);
    a.trust.insert(b_identity.device_id());
    let connection = a
        .endpoint
        .connect(b_endpoint.local_addr().unwrap(), b_identity.device_id())
        .await
        .unwrap();
    // A header announcing 1000 bytes, then only 10 of them, and the stream left open.
    let (mut send, mut recv) = connection.quinn_connection().open_bi().await.unwrap();
    let mut bytes = frame::encode_header(Kind::ECHO, 1000).unwrap().to_vec();
    bytes.extend_from_slice(&[0; 10]);
    send.write_all(&bytes).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(3), recv.read_to_end(1 << 10))
        .await
        .expect("stalled stream was never reset");
    assert!(
        matches!(
            outcome,
            Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) if code == stream_code::TIMEOUT.into()
        ),
        "{outcome:?}"
    );
    let answer = connection.request(Kind::ECHO, b"after").await.unwrap();
    assert_eq!(answer.body, b"after");
}

/// The whole `kith device add` / `kith device join CODE` exchange over QUIC: the code
/// is single-use, the joiner ends up in the user chain and becomes a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_over_quic_adds_the_joiner_to_the_chain() {
    use net::pairing::{JoinRequest, PairingCode, PairingOffers};

    let root = UserRootKey::generate();
    let a_identity = DeviceIdentity::generate();
    let mut chain = UserChain::new(root.user_id());
    let proof = a_identity.possession_proof(&root.user_id(), "laptop");
    chain
        .append(
            &root,
            LinkBody::AddDevice {
                device: a_identity.public(),
                name: "laptop".into(),
                proof,
            },
        )
        .unwrap();
    let a_id = a_identity.device_id();
    let a_trust = Arc::new(TrustSet::new());
    a_trust.set_from_chains([&chain.verify().unwrap()]);
    let (a_endpoint, mut a_inbound) = Endpoint::bind_with(
        LOCALHOST.parse().unwrap(),
        &a_identity,
        a_trust.clone(),
        config(),
    )
    .unwrap();
    let now = 1_000;
    let mut offers = PairingOffers::new();
    let code = offers
        .issue(
            root.user_id(),
            a_id,
            &[a_endpoint.local_addr().unwrap()],
            now,
            600,
        )
        .unwrap();
    a_trust.set_pairing_open(offers.any_open(now));
    let code_text = code.to_text();

    // A's side: handle PAIR requests with the offers and the chain.
    let a_trust_for_handler = a_trust.clone();
    let handler = tokio::spawn(async move {
        let mut results = Vec::new();
        while let Some(item) = a_inbound.recv().await {
            let Some(responder) = item.responder else {
                continue;
            };
            if item.frame.kind != Kind::PAIR {
                responder.refuse("unexpected");
                continue;
            }
            let outcome = JoinRequest::from_bytes(&item.frame.body).and_then(|request| {
                offers.admit_joiner(item.peer, &request, &mut chain, &root, now + 5)
            });
            match outcome {
                Ok((state, _role)) => {
                    a_trust_for_handler.set_from_chains([&state]);
                    a_trust_for_handler.set_pairing_open(offers.any_open(now + 5));
                    responder.respond(Kind::CHAIN, chain.encode());
                    results.push(true);
                }
                Err(error) => {
                    responder.refuse(&error.to_string());
                    results.push(false);
                }
            }
            if results.len() == 2 {
                break;
            }
        }
        results
    });

    // B's side: parse the code, dial A pinned to the id in the code, send the join.
    let b_identity = DeviceIdentity::generate();
    let parsed = PairingCode::parse(&code_text).unwrap();
    let b_trust = Arc::new(TrustSet::with_members([parsed.device]));
    let (b_endpoint, b_inbound) =
        Endpoint::bind_with(LOCALHOST.parse().unwrap(), &b_identity, b_trust, config()).unwrap();
    let _b_seen = serve(b_inbound);
    let connection = b_endpoint
        .connect(parsed.addresses[0], parsed.device)
        .await
        .unwrap();
    assert_eq!(connection.granted_by_peer(), Some(Admission::PairingOnly));
    let join = JoinRequest {
        role: net::pairing::JoinRole::Device,
        secret: parsed.secret,
        kem_public: b_identity.public().kem_public,
        name: "desktop".into(),
        proof: b_identity.possession_proof(&parsed.user, "desktop"),
        addresses: Vec::new(),
    };
    let answer = connection
        .request(Kind::PAIR, &join.to_bytes())
        .await
        .unwrap();
    assert_eq!(answer.kind, Kind::CHAIN);
    let received = UserChain::decode(&answer.body).unwrap();
    assert_eq!(received.user(), parsed.user);
    let state = received.verify().unwrap();
    assert!(state.is_live(&b_identity.device_id()));
    assert_eq!(state.devices[&b_identity.device_id()].name, "desktop");

    // The code is spent: presenting it again is refused.
    let again = connection.request(Kind::PAIR, &join.to_bytes()).await;
    assert!(matches!(again, Err(Error::Refused { .. })), "{again:?}");
    assert_eq!(handler.await.unwrap(), vec![true, false]);

    // B is now a member of A: a fresh connection is granted full membership.
    connection.close();
    let member = b_endpoint
        .connect(a_endpoint.local_addr().unwrap(), a_id)
        .await
        .unwrap();
    assert_eq!(member.granted_by_peer(), Some(Admission::Member));
}

/// Serves ECHO as device `KITH_HELPER_SEED` on `KITH_HELPER_ADDR`, trusting
/// `KITH_HELPER_TRUST`, until killed: the peer process for `peer_killed_with_sigkill_*`.
#[test]
#[ignore = "helper process for peer_killed_with_sigkill_is_noticed_at_once; runs only when spawned by it"]
fn crash_helper_serve() {
    let (Ok(seed), Ok(addr), Ok(trusted)) = (
        std::env::var("KITH_HELPER_SEED"),
        std::env::var("KITH_HELPER_ADDR"),
        std::env::var("KITH_HELPER_TRUST"),
    ) else {
        return;
    };
    let hex = |text: &str| -> [u8; 32] {
        data_encoding::HEXLOWER
            .decode(text.as_bytes())
            .unwrap()
            .try_into()
            .unwrap()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let identity = DeviceIdentity::from_secrets(&hex(&seed), &[8; 32]);
        let trust = Arc::new(TrustSet::with_members([DeviceId::from_bytes(hex(
            &trusted,
        ))]));
        let (endpoint, inbound) =
            Endpoint::bind_with(addr.parse().unwrap(), &identity, trust, config()).unwrap();
        let _seen = serve(inbound);
        println!("READY {}", endpoint.local_addr().unwrap());
        std::future::pending::<()>().await;
    });
}

/// The helper process; killed (SIGKILL) and reaped when dropped, so a failing test
/// leaves no process behind.
struct Helper(std::process::Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_helper(seed: &[u8; 32], addr: SocketAddr, trusted: DeviceId) -> (Helper, SocketAddr) {
    use std::io::BufRead;
    let mut helper = Helper(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_helper_serve", "--ignored", "--nocapture"])
            .env("KITH_HELPER_SEED", data_encoding::HEXLOWER.encode(seed))
            .env("KITH_HELPER_ADDR", addr.to_string())
            .env(
                "KITH_HELPER_TRUST",
                data_encoding::HEXLOWER.encode(trusted.as_bytes()),
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = helper.0.stdout.take().unwrap();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        // libtest prints "test name ... " before the test's own output, on the same line.
        if let Some((_, addr)) = line.split_once("READY ") {
            return (helper, addr.trim().parse().unwrap());
        }
    }
    panic!("helper exited before it was ready");
}

/// A peer killed with SIGKILL sends no close; when it restarts (same key, same port)
/// the stateless reset derived from its key tells us at once, so the next request
/// reconnects instead of waiting for the idle timeout (20 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_killed_with_sigkill_is_noticed_at_once() {
    let a = Node::start(&[]);
    let seed: [u8; 32] = rand::random();
    let b_id = DeviceIdentity::from_secrets(&seed, &[8; 32]).device_id();
    a.trust.insert(b_id);
    let (helper, b_addr) =
        tokio::task::block_in_place(|| spawn_helper(&seed, LOCALHOST.parse().unwrap(), a.id()));
    a.endpoint.set_addresses(b_id, vec![b_addr]);
    let old = a.endpoint.connection(b_id).await.unwrap();
    assert_eq!(old.request(Kind::ECHO, b"one").await.unwrap().body, b"one");

    drop(helper); // SIGKILL: no connection close reaches us.
    let (helper, _) = tokio::task::block_in_place(|| spawn_helper(&seed, b_addr, a.id()));
    assert!(
        !old.is_closed(),
        "a killed peer cannot have closed the connection"
    );

    let started = Instant::now();
    let answer = a.endpoint.request(b_id, Kind::ECHO, b"two").await;
    let waited = started.elapsed();
    drop(helper);
    assert_eq!(answer.unwrap().body, b"two");
    assert!(old.is_closed(), "the stale connection was not reset");
    assert!(
        waited < Duration::from_secs(10),
        "took {waited:?}: the stale connection lingered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redial_backoff_doubles_and_is_capped() {
    let identity = DeviceIdentity::generate();
    let absent = DeviceIdentity::generate().device_id();
    let trust = Arc::new(TrustSet::with_members([absent]));
    let quick = EndpointConfig {
        connect_timeout: Duration::from_millis(100),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(80),
        ..config()
    };
    let (endpoint, _inbound) =
        Endpoint::bind_with(LOCALHOST.parse().unwrap(), &identity, trust, quick).unwrap();
    // A port nobody listens on.
    let dead = std::net::UdpSocket::bind(LOCALHOST)
        .unwrap()
        .local_addr()
        .unwrap();
    endpoint.set_addresses(absent, vec![dead]);
    assert!(matches!(
        endpoint
            .connection(DeviceIdentity::generate().device_id())
            .await,
        Err(Error::NoAddress { .. })
    ));
    let mut delays_ms = Vec::new();
    while delays_ms.len() < 5 {
        match endpoint.connection(absent).await {
            Err(Error::Backoff { retry_in_ms, .. }) => {
                delays_ms.push(retry_in_ms);
                tokio::time::sleep(Duration::from_millis(retry_in_ms + 1)).await;
            }
            Err(error) => assert!(error.is_retryable(), "{error:?}"),
            Ok(_) => panic!("connected to nobody"),
        }
    }
    // Each wait is at most the cap; the later ones are longer than the first.
    assert!(delays_ms.iter().all(|delay| *delay <= 80), "{delays_ms:?}");
    assert!(
        delays_ms[4] > delays_ms[0] && delays_ms[4] > 40,
        "{delays_ms:?}"
    );
    let until = endpoint
        .connection_until(absent, Instant::now() + Duration::from_millis(300))
        .await;
    assert!(matches!(until, Err(Error::Timeout { .. })), "{until:?}");
}
