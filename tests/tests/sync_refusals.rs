//! What a daemon refuses, and that refusing leaves it up and serving: forged and
//! reused pairing codes, a device that was never paired, UDP garbage on its QUIC port,
//! and malformed or oversized frames from an authenticated device.
//!
//! A block that does not match its address is refused by net's block client and
//! venti's remote fetch; those are tested in process (`net/tests`, `venti/tests`),
//! where a peer can be made to lie.

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use kith_tests::sync::{SYNC_TIMEOUT, cluster, wait_for_content, write_synced};
use kith_tests::{Kith, pattern, skip_without_fuse};
use net::frame::Kind;
use net::identity::DeviceIdentity;

static SERIAL: Mutex<()> = Mutex::new(());

fn listen_addr(device: &Kith) -> anyhow::Result<SocketAddr> {
    let listen = device.sync_status()?.listen;
    listen
        .parse()
        .with_context(|| format!("listen address {listen:?}"))
}

fn keyring(device: &Kith) -> anyhow::Result<net::keyring::Keyring> {
    Ok(net::keyring::Keyring::load(
        &device.store().join("keyring"),
        None,
    )?)
}

/// The daemon still commits and serves: a write on `writer` opens on `reader`.
fn still_serving(writer: &Kith, reader: &Kith, name: &str) -> anyhow::Result<()> {
    let content = pattern(name.len() as u64, 5000);
    write_synced(&writer.path(name), &content)?;
    wait_for_content(&reader.path(name), &content, SYNC_TIMEOUT)
}

#[test]
fn forged_and_reused_pairing_codes_are_refused() -> anyhow::Result<()> {
    if skip_without_fuse("forged_and_reused_pairing_codes_are_refused") {
        return Ok(());
    }
    let _serial = SERIAL.lock().unwrap_or_else(|poison| poison.into_inner());
    let devices = cluster(2)?;
    let a = &devices[0];

    // A code whose secret is wrong (well-formed, checksum valid).
    let mut forged = net::pairing::PairingCode::parse(&a.device_add()?)?;
    forged.secret.0[0] ^= 1;
    let stranger = Kith::new()?;
    let refused = stranger.run(["device", "join", &forged.to_text()])?;
    assert!(!refused.status.success(), "a forged code joined");

    // A code already used.
    let code = a.device_add()?;
    let third = Kith::new()?;
    third.device_join(&code)?;
    let again = Kith::new()?;
    let reused = again.run(["device", "join", &code])?;
    assert!(
        !reused.status.success(),
        "a used code joined a second device"
    );

    // Neither refused device is listed.
    let listed = a.sync_status()?.devices.len();
    assert_eq!(listed, 3, "a, b and the one that joined");
    Ok(())
}

#[test]
fn an_unpaired_device_is_refused() -> anyhow::Result<()> {
    if skip_without_fuse("an_unpaired_device_is_refused") {
        return Ok(());
    }
    let _serial = SERIAL.lock().unwrap_or_else(|poison| poison.into_inner());
    let devices = cluster(2)?;
    let a_addr = listen_addr(&devices[0])?;
    let a_id = keyring(&devices[0])?.device.device_id();

    let runtime = tokio::runtime::Runtime::new()?;
    let answered = runtime.block_on(async {
        let stranger = DeviceIdentity::generate();
        let trust = Arc::new(net::quic::TrustSet::with_members([a_id]));
        let (endpoint, _inbound) =
            net::quic::Endpoint::bind("127.0.0.1:0".parse()?, &stranger, trust)?;
        let answered = match endpoint.connect(a_addr, a_id).await {
            Err(_) => false,
            Ok(connection) => tokio::time::timeout(
                Duration::from_secs(5),
                connection.request(Kind::ECHO, b"anyone there?"),
            )
            .await
            .is_ok_and(|answer| answer.is_ok_and(|frame| frame.kind == Kind::ECHO)),
        };
        endpoint.close().await;
        anyhow::Ok(answered)
    })?;
    assert!(!answered, "a device outside the user's chain got an answer");
    still_serving(&devices[0], &devices[1], "after-stranger")?;
    Ok(())
}

#[test]
fn garbage_and_bad_frames_leave_the_daemon_serving() -> anyhow::Result<()> {
    if skip_without_fuse("garbage_and_bad_frames_leave_the_daemon_serving") {
        return Ok(());
    }
    let _serial = SERIAL.lock().unwrap_or_else(|poison| poison.into_inner());
    let devices = cluster(3)?;
    let a_addr = listen_addr(&devices[0])?;
    let a_id = keyring(&devices[0])?.device.device_id();

    // UDP garbage: random datagrams, and ones shaped like QUIC long-header packets.
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    for n in 0..2000u64 {
        let mut datagram = pattern(n, 1 + (n as usize * 37) % 1400);
        if n % 2 == 0 {
            datagram[0] = 0xc0 | (n as u8 & 0x3f);
            if datagram.len() > 5 {
                datagram[1..5].copy_from_slice(&1u32.to_be_bytes());
            }
        }
        let _ = socket.send_to(&datagram, a_addr);
    }
    still_serving(&devices[1], &devices[0], "after-garbage")?;

    // An authenticated device (C's keys) sending malformed and oversized frames.
    let c_identity = keyring(&devices[2])?.device;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let trust = Arc::new(net::quic::TrustSet::with_members([a_id]));
        let (endpoint, _inbound) =
            net::quic::Endpoint::bind("127.0.0.1:0".parse()?, &c_identity, trust)?;
        let connection = endpoint.connect(a_addr, a_id).await?;
        let deadline = Duration::from_secs(10);
        // Malformed bodies of every kind a member may send.
        for kind in [
            Kind::PAXOS,
            Kind::BLOCK_REQUEST,
            Kind::CHAIN,
            Kind::PAIR,
            Kind::ECHO,
        ] {
            for body in [
                Vec::new(),
                pattern(kind.as_u8().into(), 40),
                vec![0xff; 4000],
            ] {
                let _ = tokio::time::timeout(deadline, connection.request(kind, &body)).await;
                let _ = tokio::time::timeout(deadline, connection.send(kind, &body)).await;
            }
        }
        // Raw streams: a header announcing more than any kind allows, an unknown kind
        // and version, and a header whose body never comes.
        let quinn = connection.quinn_connection();
        for header in [
            [1u8, Kind::PAXOS.as_u8(), 0xff, 0xff, 0xff, 0xff],
            [1, 0xee, 4, 0, 0, 0],
            [9, Kind::ECHO.as_u8(), 4, 0, 0, 0],
            [1, Kind::ECHO.as_u8(), 0, 0, 1, 0],
        ] {
            if let Ok((mut send, mut recv)) = quinn.open_bi().await {
                let _ = send.write_all(&header).await;
                let _ = send.finish();
                let _ = tokio::time::timeout(deadline, recv.read_to_end(1 << 20)).await;
            }
        }
        connection.close();
        endpoint.close().await;
        anyhow::Ok(())
    })?;
    still_serving(&devices[1], &devices[0], "after-frames")?;
    still_serving(&devices[0], &devices[2], "after-frames-c")?;
    Ok(())
}
