//! Every decoder that reads bytes from a disk or a peer, as one table of fuzz targets.
//!
//! A [`Target`] pairs a decoder with valid encodings of it (seeds) and says what must
//! hold for any input: the decoder returns (never panics), and what it accepts
//! re-encodes to exactly the input bytes (encodings are canonical) or passes the
//! target's own check. Tamper-evident formats (signed, sealed or checksummed) must
//! refuse every single-byte change of a seed.
//!
//! The same [`run`] function is the body of the cargo-fuzz targets in `fuzz/` and of
//! the stable test `tests/decoders.rs` (seeded random inputs, truncations, mutations,
//! huge length fields), so the two cannot drift.

use std::net::SocketAddr;
use std::path::Path;

use ed25519_dalek::SigningKey;

/// What a decoder made of one input.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Refused with a typed error.
    Refused,
    /// Accepted, and everything the target can check about the value held.
    Accepted,
}

/// One decoder under test.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    /// Decodes `input`; `Err` is a broken property (a round trip that differs, a
    /// forged input accepted), described for the failure message.
    pub decode: fn(&[u8]) -> Result<Verdict, String>,
    /// Valid encodings to mutate.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Every single-byte change of a seed must be refused.
    pub tamper_evident: bool,
}

/// The body of every fuzz target: decode `input` with target `name`, panic on a broken
/// property (a panic inside the decoder propagates as itself).
pub fn run(name: &str, input: &[u8]) {
    let Some(target) = targets().into_iter().find(|target| target.name == name) else {
        panic!("no decoder target named {name}");
    };
    if let Err(broken) = (target.decode)(input) {
        panic!("{name}: {broken} (input {})", hex(input));
    }
}

/// Lower-case hex of `bytes`, for failure messages that must be replayable.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Every target, in the order of the crates they decode for.
pub fn targets() -> Vec<Target> {
    vec![
        // net: frames, entries, identity, keyring, pairing, blocks.
        target("net_frame", net_frame, net_frame_seeds),
        target("net_frame_header", net_frame_header, net_frame_seeds),
        target("net_entry_header", net_entry_header, net_entry_seeds),
        tamper_evident(target("net_entry_open", net_entry_open, net_entry_seeds)),
        target("net_chain_link", net_chain_link, net_chain_link_seeds),
        target("net_user_chain", net_user_chain, net_user_chain_seeds),
        tamper_evident(target(
            "net_user_chain_verified",
            net_user_chain_verified,
            net_signed_user_chain_seeds,
        )),
        target(
            "net_keyring_protection",
            net_keyring_protection,
            net_keyring_seeds,
        ),
        tamper_evident(target(
            "net_keyring_file",
            net_keyring_file,
            net_keyring_seeds,
        )),
        target(
            "net_keyring_secrets",
            net_keyring_secrets,
            net_keyring_secrets_seeds,
        ),
        tamper_evident(target(
            "net_pairing_code",
            net_pairing_code,
            net_pairing_code_seeds,
        )),
        target(
            "net_pairing_code_body",
            net_pairing_code_body,
            net_pairing_code_body_seeds,
        ),
        target(
            "net_pairing_code_text",
            net_pairing_code_text,
            net_pairing_code_text_seeds,
        ),
        target("net_join_request", net_join_request, net_join_request_seeds),
        target("net_join_answer", net_join_answer, net_join_answer_seeds),
        target("net_key_rotation", net_key_rotation, net_key_rotation_seeds),
        tamper_evident(target("net_invite", net_invite, net_invite_seeds)),
        target("net_invite_body", net_invite_body, net_invite_body_seeds),
        target("net_invite_text", net_invite_text, net_invite_text_seeds),
        target(
            "net_block_request",
            net_block_request,
            net_block_request_seeds,
        ),
        target("net_block_push", net_block_push, net_block_push_seeds),
        // paxos: messages and the acceptor store's records.
        target("paxos_message", paxos_message, paxos_message_seeds),
        target("paxos_entry", paxos_entry, paxos_entry_seeds),
        target("paxos_snapshot", paxos_snapshot, paxos_snapshot_seeds),
        target("paxos_ballot", paxos_ballot, paxos_ballot_seeds),
        target("paxos_command", paxos_command, paxos_command_seeds),
        // fossil: operations, contents, checkpoints, the log file.
        target("fossil_op", fossil_op, fossil_op_seeds),
        target("fossil_content", fossil_content, fossil_content_seeds),
        target("fossil_image", fossil_image, fossil_image_seeds),
        target("fossil_log_file", fossil_log_file, fossil_log_file_seeds),
        tamper_evident(target(
            "fossil_volume_key",
            fossil_volume_key,
            fossil_volume_key_seeds,
        )),
        // venti: refs, arena and record headers, sealed blocks.
        target("venti_block_ref", venti_block_ref, venti_block_ref_seeds),
        tamper_evident(target(
            "venti_arena_header",
            venti_arena_header,
            venti_arena_header_seeds,
        )),
        tamper_evident(target(
            "venti_record_header",
            venti_record_header,
            venti_record_header_seeds,
        )),
        tamper_evident(target(
            "venti_sealed_block",
            venti_sealed_block,
            venti_sealed_block_seeds,
        )),
    ]
}

fn target(
    name: &'static str,
    decode: fn(&[u8]) -> Result<Verdict, String>,
    seeds: fn() -> Vec<Vec<u8>>,
) -> Target {
    Target {
        name,
        decode,
        seeds,
        tamper_evident: false,
    }
}

fn tamper_evident(target: Target) -> Target {
    Target {
        tamper_evident: true,
        ..target
    }
}

/// Accepted if `reencoded` is the input again, else a broken round trip.
fn round_trip(what: &str, input: &[u8], reencoded: &[u8]) -> Result<Verdict, String> {
    if reencoded == input {
        Ok(Verdict::Accepted)
    } else {
        Err(format!(
            "{what}: accepted input re-encodes differently ({})",
            hex(reencoded)
        ))
    }
}

/// For formats that accept more than one encoding of a value (set elements in any
/// order, ignored bytes): the value re-encodes to bytes that decode to the same value
/// and re-encode to themselves.
fn value_round_trip<T: PartialEq + std::fmt::Debug, E>(
    what: &str,
    value: &T,
    encode: impl Fn(&T) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> Result<T, E>,
) -> Result<Verdict, String> {
    let reencoded = encode(value);
    match decode(&reencoded) {
        Ok(again) if again == *value && encode(&again) == reencoded => Ok(Verdict::Accepted),
        Ok(again) => Err(format!("{what}: re-encoded value decodes as {again:?}")),
        Err(_) => Err(format!(
            "{what}: re-encoded value is refused ({})",
            hex(&reencoded)
        )),
    }
}

// ---------------------------------------------------------------------------------
// net

fn net_frame(input: &[u8]) -> Result<Verdict, String> {
    match net::frame::decode(input) {
        Err(_) => Ok(Verdict::Refused),
        Ok(frame) => {
            let reencoded = net::frame::encode(frame.kind, &frame.body)
                .map_err(|error| format!("decoded frame does not encode: {error}"))?;
            round_trip("frame", input, &reencoded)
        }
    }
}

fn net_frame_header(input: &[u8]) -> Result<Verdict, String> {
    let Some(header) = input.first_chunk::<{ net::frame::HEADER_BYTES }>() else {
        return Ok(Verdict::Refused);
    };
    match net::frame::decode_header(header) {
        Err(_) => Ok(Verdict::Refused),
        Ok((kind, len)) => {
            let reencoded = net::frame::encode_header(kind, len as usize)
                .map_err(|error| format!("decoded header does not encode: {error}"))?;
            round_trip("frame header", header, &reencoded)
        }
    }
}

fn net_frame_seeds() -> Vec<Vec<u8>> {
    let kinds = [
        (net::frame::Kind::PAXOS, 300),
        (net::frame::Kind::BLOCK_REQUEST, 48),
        (net::frame::Kind::BLOCK_RESPONSE, 200),
        (net::frame::Kind::PAIR, 120),
        (net::frame::Kind::CHAIN, 90),
        (net::frame::Kind::ERROR, 20),
        (net::frame::Kind::ECHO, 0),
        (net::frame::Kind::WELCOME, 1),
    ];
    kinds
        .iter()
        .enumerate()
        .filter_map(|(seed, (kind, len))| {
            net::frame::encode(*kind, &crate::pattern(seed as u64, *len)).ok()
        })
        .collect()
}

const ENTRY_VOLUME: paxos::VolumeId = paxos::VolumeId(0x4b17_5eed);

fn entry_signing_key() -> SigningKey {
    SigningKey::from_bytes(&[0x42; 32])
}

fn entry_key() -> net::entry::EntryKey {
    net::entry::EntryKey::derive(&[0x17; 32])
}

fn net_entry_header(input: &[u8]) -> Result<Verdict, String> {
    Ok(match net::entry::EntryHeader::parse(input) {
        Ok(_) => Verdict::Accepted,
        Err(_) => Verdict::Refused,
    })
}

/// Opens with the keys the seeds were sealed with: only the seeds themselves may open.
fn net_entry_open(input: &[u8]) -> Result<Verdict, String> {
    let opened = net::entry::Entry::open(
        input,
        ENTRY_VOLUME,
        |epoch| (epoch == net::entry::KeyEpoch(2)).then(entry_key),
        |author| (author == paxos::NodeId(1)).then(|| entry_signing_key().verifying_key()),
    );
    match opened {
        Err(_) => Ok(Verdict::Refused),
        Ok(opened) => {
            let header = net::entry::EntryHeader::parse(input)
                .map_err(|error| format!("opened entry whose header does not parse: {error}"))?;
            if opened.header != header {
                return Err("opened header differs from the parsed one".into());
            }
            Ok(Verdict::Accepted)
        }
    }
}

fn net_entry_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (seq, (kind, len)) in [
        (net::entry::EntryKind::Op, 0),
        (net::entry::EntryKind::Op, 37),
        (net::entry::EntryKind::Checkpoint, 200),
    ]
    .into_iter()
    .enumerate()
    {
        let header = net::entry::EntryHeader {
            kind,
            volume: ENTRY_VOLUME,
            epoch: net::entry::KeyEpoch(2),
            author: paxos::NodeId(1),
            seq: seq as u64 + 1,
        };
        if let Ok(entry) = net::entry::Entry::seal(
            header,
            &crate::pattern(seq as u64, len),
            &entry_key(),
            &entry_signing_key(),
        ) {
            seeds.push(entry.into_bytes());
        }
    }
    seeds
}

fn net_chain_link(input: &[u8]) -> Result<Verdict, String> {
    match net::identity::ChainLink::decode(input) {
        Err(_) => Ok(Verdict::Refused),
        Ok(link) => round_trip("chain link", input, &link.encode()),
    }
}

fn net_chain_link_seeds() -> Vec<Vec<u8>> {
    sample_chain()
        .links()
        .iter()
        .map(|link| link.encode())
        .collect()
}

fn net_user_chain(input: &[u8]) -> Result<Verdict, String> {
    match net::identity::UserChain::decode(input) {
        Err(_) => Ok(Verdict::Refused),
        Ok(chain) => {
            // Verifying decoded garbage must not panic either; its answer is free.
            let _ = chain.verify();
            round_trip("user chain", input, &chain.encode())
        }
    }
}

/// Decodes and verifies: only chains the root key signed are accepted.
fn net_user_chain_verified(input: &[u8]) -> Result<Verdict, String> {
    let Ok(chain) = net::identity::UserChain::decode(input) else {
        return Ok(Verdict::Refused);
    };
    match chain.verify() {
        Err(_) => Ok(Verdict::Refused),
        Ok(_) => round_trip("verified user chain", input, &chain.encode()),
    }
}

fn sample_chain() -> net::identity::UserChain {
    let root = net::identity::UserRootKey::from_seed(&[7; 32]);
    let mut chain = net::identity::UserChain::new(root.user_id());
    let devices: Vec<_> = (1..=3u8)
        .map(|n| net::identity::DeviceIdentity::from_secrets(&[n; 32], &[n + 10; 32]))
        .collect();
    for (n, device) in devices.iter().enumerate() {
        let name = format!("device-{n}");
        let proof = device.possession_proof(&root.user_id(), &name);
        let _ = chain.append(
            &root,
            net::identity::LinkBody::AddDevice {
                device: device.public(),
                name,
                proof,
            },
        );
    }
    let _ = chain.append(
        &root,
        net::identity::LinkBody::NewUserKey {
            generation: 1,
            public: [9; 32],
        },
    );
    if let Some(gone) = devices.get(2) {
        let _ = chain.append(
            &root,
            net::identity::LinkBody::RevokeDevice {
                device: gone.device_id(),
            },
        );
    }
    chain
}

/// Chains with at least one link: the empty chain signs nothing, so any user id in it
/// verifies.
fn net_signed_user_chain_seeds() -> Vec<Vec<u8>> {
    let mut seeds = net_user_chain_seeds();
    seeds.retain(|seed| {
        net::identity::UserChain::decode(seed).is_ok_and(|chain| !chain.links().is_empty())
    });
    seeds
}

fn net_user_chain_seeds() -> Vec<Vec<u8>> {
    let chain = sample_chain();
    let mut seeds = vec![chain.encode()];
    // The empty chain and a one-link prefix.
    for len in [0, 1] {
        let prefix = net::identity::UserChain::from_links(
            chain.user(),
            chain.links().get(..len).unwrap_or_default().to_vec(),
        );
        seeds.push(prefix.encode());
    }
    seeds
}

/// The ten bytes that open an unencrypted keyring file (magic, version, protection);
/// its checksum covers them and the secrets.
const KEYRING_UNENCRYPTED_HEADER_BYTES: usize = 10;

/// Writes `bytes` to a fresh file and hands `read` its path. The files live in memory
/// (`/dev/shm` where there is one): the decoders fsync, and a disk would make thousands
/// of inputs take minutes.
fn with_temp_file<T>(bytes: &[u8], read: impl FnOnce(&Path) -> T) -> Result<T, String> {
    let shm = Path::new("/dev/shm");
    let mut builder = tempfile::Builder::new();
    builder.prefix("kith-dec");
    let dir = if shm.is_dir() {
        builder.tempdir_in(shm)
    } else {
        builder.tempdir()
    }
    .map_err(|error| format!("temp dir: {error}"))?;
    let path = dir.path().join("file");
    std::fs::write(&path, bytes).map_err(|error| format!("writing temp file: {error}"))?;
    Ok(read(&path))
}

fn net_keyring_protection(input: &[u8]) -> Result<Verdict, String> {
    Ok(match net::keyring::parse_protection(input) {
        Ok(_) => Verdict::Accepted,
        Err(_) => Verdict::Refused,
    })
}

const KEYRING_PASSPHRASE: &str = "correct horse";

/// Loads the file; an encrypted one with the seeds' passphrase only when its header
/// asks for a key derivation no costlier than the tests' (the header sets the cost: up
/// to 1 GiB of Argon2 memory is a valid, if slow, keyring). An accepted unencrypted
/// keyring saves back to the same bytes; an encrypted one gets a fresh salt and nonce.
fn net_keyring_file(input: &[u8]) -> Result<Verdict, String> {
    let cheap = net::keyring::KdfParams::INSECURE_FOR_TESTS;
    let passphrase = match net::keyring::parse_protection(input) {
        Ok(net::keyring::Protection::Passphrase(params))
            if params.memory_kib <= cheap.memory_kib
                && params.passes <= cheap.passes
                && params.lanes <= cheap.lanes =>
        {
            Some(KEYRING_PASSPHRASE)
        }
        Ok(net::keyring::Protection::Passphrase(_)) => return Ok(Verdict::Refused),
        _ => None,
    };
    let loaded = with_temp_file(input, |path| net::keyring::Keyring::load(path, passphrase))?;
    match loaded {
        Err(_) => Ok(Verdict::Refused),
        Ok(_) if passphrase.is_some() => Ok(Verdict::Accepted),
        Ok(keyring) => {
            let saved = with_temp_file(&[], |path| {
                keyring
                    .save(path, net::keyring::Lock::Unencrypted)
                    .map_err(|error| error.to_string())
                    .and_then(|()| std::fs::read(path).map_err(|error| error.to_string()))
            })??;
            round_trip("keyring file", input, &saved)
        }
    }
}

fn sample_keyring_file() -> Vec<u8> {
    let device = net::identity::DeviceIdentity::from_secrets(&[3; 32], &[4; 32]);
    let keyring = net::keyring::Keyring::new(device);
    with_temp_file(&[], |path| {
        keyring
            .save(path, net::keyring::Lock::Unencrypted)
            .ok()
            .and_then(|()| std::fs::read(path).ok())
    })
    .ok()
    .flatten()
    .unwrap_or_default()
}

fn net_keyring_seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![sample_keyring_file()];
    let device = net::identity::DeviceIdentity::from_secrets(&[5; 32], &[6; 32]);
    let keyring = net::keyring::Keyring::new(device);
    let encrypted = with_temp_file(&[], |path| {
        keyring
            .save(
                path,
                net::keyring::Lock::Passphrase {
                    passphrase: KEYRING_PASSPHRASE,
                    params: net::keyring::KdfParams::INSECURE_FOR_TESTS,
                },
            )
            .ok()
            .and_then(|()| std::fs::read(path).ok())
    });
    if let Ok(Some(encrypted)) = encrypted {
        seeds.push(encrypted);
    }
    seeds
}

/// The input is the secrets of an unencrypted keyring, wrapped in a valid header and
/// checksum so the secrets decoder itself is reached.
fn net_keyring_secrets(input: &[u8]) -> Result<Verdict, String> {
    let file = seal_keyring_secrets(input)?;
    net_keyring_file(&file)
}

fn seal_keyring_secrets(secrets: &[u8]) -> Result<Vec<u8>, String> {
    let sample = sample_keyring_file();
    let header = sample
        .get(..KEYRING_UNENCRYPTED_HEADER_BYTES)
        .ok_or("no sample keyring file")?;
    let body_len = u32::try_from(secrets.len() + 32).map_err(|_| "secrets too long")?;
    let mut check = blake3::Hasher::new();
    check.update(header).update(secrets);
    let mut file = header.to_vec();
    file.extend_from_slice(&body_len.to_le_bytes());
    file.extend_from_slice(secrets);
    file.extend_from_slice(check.finalize().as_bytes());
    Ok(file)
}

fn net_keyring_secrets_seeds() -> Vec<Vec<u8>> {
    let sample = sample_keyring_file();
    // header ‖ body length u32 ‖ secrets ‖ checksum[32]
    sample
        .get(KEYRING_UNENCRYPTED_HEADER_BYTES + 4..sample.len().saturating_sub(32))
        .map(|secrets| vec![secrets.to_vec()])
        .unwrap_or_default()
}

const CODE_CHECK_CONTEXT: &str = "kith 2026-01-01 pairing code checksum v1";
const INVITE_CHECK_CONTEXT: &str = "kith 2026-01-01 invite checksum v1";
const PAIRING_CHECK_BYTES: usize = 4;

fn with_check(context: &str, body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    out.extend_from_slice(
        blake3::derive_key(context, body)
            .get(..PAIRING_CHECK_BYTES)
            .unwrap_or_default(),
    );
    out
}

fn sample_addresses() -> Vec<Vec<SocketAddr>> {
    let v4: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 7420));
    let v6: SocketAddr = SocketAddr::from(([0xfe80, 0, 0, 0, 0, 0, 0, 1], 65535));
    vec![vec![], vec![v4], vec![v4, v6, v4]]
}

fn sample_codes() -> Vec<net::pairing::PairingCode> {
    sample_addresses()
        .into_iter()
        .enumerate()
        .map(|(n, addresses)| net::pairing::PairingCode {
            user: net::identity::UserId::from_bytes([n as u8; 32]),
            device: net::identity::DeviceId::from_bytes([0xd0 + n as u8; 32]),
            secret: net::pairing::PairingSecret([0x5e; net::pairing::PAIRING_SECRET_BYTES]),
            expires_unix_s: 1_800_000_000 + n as u64,
            addresses,
        })
        .collect()
}

fn net_pairing_code(input: &[u8]) -> Result<Verdict, String> {
    match net::pairing::PairingCode::from_bytes(input) {
        Err(_) => Ok(Verdict::Refused),
        Ok(code) => round_trip("pairing code", input, &code.to_bytes()),
    }
}

fn net_pairing_code_seeds() -> Vec<Vec<u8>> {
    sample_codes().iter().map(|code| code.to_bytes()).collect()
}

/// The input is a code without its checksum: the body decoder itself is reached.
fn net_pairing_code_body(input: &[u8]) -> Result<Verdict, String> {
    net_pairing_code(&with_check(CODE_CHECK_CONTEXT, input))
}

fn net_pairing_code_body_seeds() -> Vec<Vec<u8>> {
    strip_checks(net_pairing_code_seeds())
}

fn strip_checks(seeds: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    seeds
        .into_iter()
        .map(|mut seed| {
            seed.truncate(seed.len().saturating_sub(PAIRING_CHECK_BYTES));
            seed
        })
        .collect()
}

/// Text is parsed leniently (case, dashes, white space), so the check is that an
/// accepted code prints to text that parses back to the same code.
fn net_pairing_code_text(input: &[u8]) -> Result<Verdict, String> {
    let Ok(text) = std::str::from_utf8(input) else {
        return Ok(Verdict::Refused);
    };
    match net::pairing::PairingCode::parse(text) {
        Err(_) => Ok(Verdict::Refused),
        Ok(code) => match net::pairing::PairingCode::parse(&code.to_text()) {
            Ok(again) if again == code => Ok(Verdict::Accepted),
            other => Err(format!("printed code parses as {other:?}")),
        },
    }
}

fn net_pairing_code_text_seeds() -> Vec<Vec<u8>> {
    sample_codes()
        .iter()
        .map(|code| code.to_text().into_bytes())
        .collect()
}

fn net_join_request(input: &[u8]) -> Result<Verdict, String> {
    match net::pairing::JoinRequest::from_bytes(input) {
        Err(_) => Ok(Verdict::Refused),
        Ok(request) => round_trip("join request", input, &request.to_bytes()),
    }
}

fn net_join_answer(input: &[u8]) -> Result<Verdict, String> {
    match net::pairing::JoinAnswer::from_bytes(input) {
        Err(_) => Ok(Verdict::Refused),
        // The volume info's configuration is a set: any order of its nodes decodes.
        Ok(answer) => value_round_trip(
            "join answer",
            &answer,
            net::pairing::JoinAnswer::to_bytes,
            net::pairing::JoinAnswer::from_bytes,
        ),
    }
}

fn net_join_answer_seeds() -> Vec<Vec<u8>> {
    let user = net::identity::UserRootKey::from_seed(&[4; 32]);
    let chain = net::identity::UserChain::new(user.user_id());
    let Some(genesis) = sample_config() else {
        return Vec::new();
    };
    let info = net::pairing::VolumeInfo {
        volume: paxos::VolumeId(9),
        genesis,
        nodes: Vec::new(),
        addresses: Vec::new(),
    };
    let sealed = [5u8; net::pairing::SEALED_SECRET_BYTES];
    [
        net::pairing::JoinGrant::Witness,
        net::pairing::JoinGrant::Device {
            secrets: vec![(net::entry::KeyEpoch(0), sealed)],
        },
        net::pairing::JoinGrant::Device {
            secrets: vec![
                (net::entry::KeyEpoch(0), sealed),
                (
                    net::entry::KeyEpoch(3),
                    [6; net::pairing::SEALED_SECRET_BYTES],
                ),
            ],
        },
    ]
    .into_iter()
    .map(|grant| {
        net::pairing::JoinAnswer {
            node: paxos::NodeId(2),
            grant,
            chain: chain.clone(),
            info: info.clone(),
        }
        .to_bytes()
    })
    .collect()
}

fn net_key_rotation(input: &[u8]) -> Result<Verdict, String> {
    match net::entry::KeyRotation::from_bytes(input) {
        Err(_) => Ok(Verdict::Refused),
        Ok(rotation) => round_trip("key rotation", input, &rotation.to_bytes()),
    }
}

fn net_key_rotation_seeds() -> Vec<Vec<u8>> {
    let share = |byte| [byte; net::pairing::SEALED_SECRET_BYTES];
    [
        vec![(paxos::NodeId(1), share(1))],
        vec![(paxos::NodeId(1), share(1)), (paxos::NodeId(7), share(7))],
    ]
    .into_iter()
    .enumerate()
    .map(|(n, shares)| {
        net::entry::KeyRotation {
            epoch: net::entry::KeyEpoch(n as u64 + 1),
            shares,
        }
        .to_bytes()
    })
    .collect()
}

fn net_join_request_seeds() -> Vec<Vec<u8>> {
    [
        "",
        "laptop",
        "a device name of sixty-four bytes, the longest one allowed..",
    ]
    .iter()
    .zip(sample_addresses())
    .map(|(name, addresses)| {
        net::pairing::JoinRequest {
            role: net::pairing::JoinRole::Device,
            secret: net::pairing::PairingSecret([1; net::pairing::PAIRING_SECRET_BYTES]),
            kem_public: [2; 32],
            name: (*name).to_owned(),
            proof: [3; 64],
            addresses,
        }
        .to_bytes()
    })
    .collect()
}

fn sample_invites() -> Vec<net::pairing::Invite> {
    sample_addresses()
        .into_iter()
        .enumerate()
        .map(|(n, addresses)| net::pairing::Invite {
            user: net::identity::UserId::from_bytes([0x10 + n as u8; 32]),
            addresses,
        })
        .collect()
}

fn net_invite(input: &[u8]) -> Result<Verdict, String> {
    match net::pairing::Invite::from_bytes(input) {
        Err(_) => Ok(Verdict::Refused),
        Ok(invite) => round_trip("invite", input, &invite.to_bytes()),
    }
}

fn net_invite_seeds() -> Vec<Vec<u8>> {
    sample_invites()
        .iter()
        .map(|invite| invite.to_bytes())
        .collect()
}

fn net_invite_body(input: &[u8]) -> Result<Verdict, String> {
    net_invite(&with_check(INVITE_CHECK_CONTEXT, input))
}

fn net_invite_body_seeds() -> Vec<Vec<u8>> {
    strip_checks(net_invite_seeds())
}

fn net_invite_text(input: &[u8]) -> Result<Verdict, String> {
    let Ok(text) = std::str::from_utf8(input) else {
        return Ok(Verdict::Refused);
    };
    match net::pairing::Invite::parse(text) {
        Err(_) => Ok(Verdict::Refused),
        Ok(invite) => match net::pairing::Invite::parse(&invite.to_text()) {
            Ok(again) if again == invite => Ok(Verdict::Accepted),
            other => Err(format!("printed invite parses as {other:?}")),
        },
    }
}

fn net_invite_text_seeds() -> Vec<Vec<u8>> {
    sample_invites()
        .iter()
        .map(|invite| invite.to_text().into_bytes())
        .collect()
}

fn net_block_request(input: &[u8]) -> Result<Verdict, String> {
    match net::blocks::decode_request(input) {
        Err(_) => Ok(Verdict::Refused),
        Ok((volume, address)) => round_trip(
            "block request",
            input,
            &net::blocks::encode_request(volume, &address),
        ),
    }
}

fn net_block_request_seeds() -> Vec<Vec<u8>> {
    vec![
        net::blocks::encode_request(paxos::VolumeId(u128::MAX - 5), &venti::Address([7; 32]))
            .to_vec(),
    ]
}

fn net_block_push(input: &[u8]) -> Result<Verdict, String> {
    let Ok(push) = net::blocks::decode_push(input) else {
        return Ok(Verdict::Refused);
    };
    if let Some((address, _)) = push
        .blocks
        .iter()
        .find(|(address, bytes)| venti::Address::of(bytes) != *address)
    {
        return Err(format!(
            "block push: accepted a block that does not hash to {}",
            hex(address.as_bytes())
        ));
    }
    let reencoded = net::blocks::encode_push(push.volume, &push.blocks)
        .map_err(|error| format!("block push: an accepted push does not re-encode: {error}"))?;
    round_trip("block push", input, &reencoded)
}

fn net_block_push_seeds() -> Vec<Vec<u8>> {
    let blocks: Vec<Vec<u8>> = vec![b"sealed bytes of one block".to_vec(), vec![0xA5; 300]];
    let addressed: Vec<(venti::Address, &[u8])> = blocks
        .iter()
        .map(|bytes| (venti::Address::of(bytes), bytes.as_slice()))
        .collect();
    [&addressed[..1], &addressed[..]]
        .into_iter()
        .filter_map(|blocks| net::blocks::encode_push(paxos::VolumeId(9), blocks).ok())
        .collect()
}

// ---------------------------------------------------------------------------------
// paxos

fn ballot(epoch: u64, round: u64, node: u64) -> paxos::Ballot {
    paxos::Ballot {
        epoch: paxos::ConfigId(epoch),
        round,
        node: paxos::NodeId(node),
    }
}

fn sample_config() -> Option<paxos::Config> {
    paxos::Config::majority(
        paxos::ConfigId(3),
        [1, 2, 3].map(paxos::NodeId),
        [paxos::NodeId(3)],
        [paxos::NodeId(9)],
    )
    .ok()
}

fn sample_command(seq: u64) -> paxos::Command {
    paxos::Command {
        proposer: paxos::NodeId(2),
        seq,
        payload: crate::pattern(seq, 40),
    }
}

fn sample_entries() -> Vec<paxos::Entry> {
    let mut entries = vec![paxos::Entry::Noop, paxos::Entry::Command(sample_command(5))];
    entries.extend(sample_config().map(paxos::Entry::Reconfigure));
    entries
}

fn sample_snapshot() -> Option<paxos::Snapshot> {
    Some(paxos::Snapshot {
        slot: paxos::Slot(40),
        chain: paxos::ChainHash([4; 32]),
        config: sample_config()?,
        applied_seqs: [(paxos::NodeId(1), 7), (paxos::NodeId(2), 9)]
            .into_iter()
            .collect(),
        state: crate::pattern(40, 100),
    })
}

fn paxos_message(input: &[u8]) -> Result<Verdict, String> {
    match paxos::codec::decode(input) {
        Err(_) => Ok(Verdict::Refused),
        Ok(envelope) => value_round_trip(
            "paxos message",
            &envelope,
            paxos::codec::encode,
            paxos::codec::decode,
        ),
    }
}

fn paxos_message_seeds() -> Vec<Vec<u8>> {
    use paxos::{Body, Slot};
    let entries = sample_entries();
    let mut bodies = vec![
        Body::Prepare { first: Slot(3) },
        Body::Promise {
            first: Slot(3),
            committed: Slot(2),
            accepted: entries
                .iter()
                .enumerate()
                .map(|(n, entry)| (Slot(3 + n as u64), ballot(3, 1, 1), entry.clone()))
                .collect(),
        },
        Body::Accept {
            first: Slot(5),
            entries: entries.clone(),
            decided: Slot(4),
        },
        Body::Accepted {
            first: Slot(5),
            count: 3,
        },
        Body::Reject {
            promised: ballot(3, 4, 2),
            committed: Slot(8),
        },
        Body::Heartbeat {
            decided: Slot(9),
            head: paxos::ChainHash([1; 32]),
            round: 12,
            ranking: vec![paxos::NodeId(2), paxos::NodeId(1)],
        },
        Body::HeartbeatAck {
            round: 12,
            committed: Slot(9),
            score_ms: 4,
        },
        Body::Fetch { first: Slot(1) },
        Body::Entries {
            first: Slot(1),
            prev: paxos::ChainHash([2; 32]),
            entries,
            committed: Slot(3),
        },
        Body::Forward {
            commands: vec![sample_command(1), sample_command(2)],
        },
        Body::Redirect {
            leader: Some(paxos::NodeId(2)),
        },
        Body::Redirect { leader: None },
        Body::ReadIndexRequest {
            id: paxos::ReadId(77),
        },
        Body::ReadIndexReply {
            id: paxos::ReadId(77),
            slot: Some(Slot(9)),
        },
        Body::TimeoutNow,
    ];
    bodies.extend(sample_snapshot().map(|snapshot| Body::SnapshotData { snapshot }));
    bodies
        .into_iter()
        .map(|body| {
            paxos::codec::encode(&paxos::Envelope {
                volume: paxos::VolumeId(0xabcd),
                config: paxos::ConfigId(3),
                ballot: ballot(3, 2, 1),
                body,
            })
        })
        .collect()
}

fn paxos_entry(input: &[u8]) -> Result<Verdict, String> {
    match paxos::codec::decode_entry(input) {
        Err(_) => Ok(Verdict::Refused),
        Ok(entry) => value_round_trip(
            "paxos entry",
            &entry,
            |entry| {
                let mut out = Vec::new();
                paxos::codec::encode_entry(entry, &mut out);
                out
            },
            paxos::codec::decode_entry,
        ),
    }
}

fn paxos_entry_seeds() -> Vec<Vec<u8>> {
    sample_entries()
        .iter()
        .map(|entry| {
            let mut out = Vec::new();
            paxos::codec::encode_entry(entry, &mut out);
            out
        })
        .collect()
}

fn paxos_snapshot(input: &[u8]) -> Result<Verdict, String> {
    match paxos::codec::decode_snapshot(input) {
        Err(_) => Ok(Verdict::Refused),
        Ok(snapshot) => value_round_trip(
            "paxos snapshot",
            &snapshot,
            paxos::codec::encode_snapshot,
            paxos::codec::decode_snapshot,
        ),
    }
}

fn paxos_snapshot_seeds() -> Vec<Vec<u8>> {
    sample_snapshot()
        .map(|snapshot| vec![paxos::codec::encode_snapshot(&snapshot)])
        .unwrap_or_default()
}

fn paxos_ballot(input: &[u8]) -> Result<Verdict, String> {
    match paxos::codec::decode_ballot(input) {
        Err(_) => Ok(Verdict::Refused),
        Ok(ballot) => round_trip("ballot", input, &paxos::codec::encode_ballot(ballot)),
    }
}

fn paxos_ballot_seeds() -> Vec<Vec<u8>> {
    vec![paxos::codec::encode_ballot(ballot(3, u64::MAX, 2))]
}

fn paxos_command(input: &[u8]) -> Result<Verdict, String> {
    match paxos::codec::decode_command(input) {
        Err(_) => Ok(Verdict::Refused),
        Ok(command) => round_trip("command", input, &paxos::codec::encode_command(&command)),
    }
}

fn paxos_command_seeds() -> Vec<Vec<u8>> {
    vec![
        paxos::codec::encode_command(&sample_command(1)),
        paxos::codec::encode_command(&paxos::Command {
            proposer: paxos::NodeId(1),
            seq: 0,
            payload: Vec::new(),
        }),
    ]
}

// ---------------------------------------------------------------------------------
// fossil

fn sample_block_ref(n: u8) -> venti::BlockRef {
    venti::BlockRef {
        address: venti::Address([n; 32]),
        key: [n ^ 0xff; 32],
        epoch: u32::from(n),
        length: 1 << 20,
    }
}

fn sample_contents() -> Vec<fossil::op::Content> {
    use fossil::op::{Content, Slice};
    vec![
        Content::EMPTY,
        Content::Inline(b"hello".to_vec()),
        Content::Tree(sample_block_ref(1)),
        Content::Slices(vec![
            Slice {
                root: sample_block_ref(2),
                offset: 0,
                len: 4096,
            },
            Slice {
                root: sample_block_ref(3),
                offset: 4096,
                len: 10,
            },
        ]),
    ]
}

fn fossil_content(input: &[u8]) -> Result<Verdict, String> {
    match fossil::op::Content::decode(input) {
        Err(_) => Ok(Verdict::Refused),
        Ok(content) => round_trip("content", input, &content.to_bytes()),
    }
}

fn fossil_content_seeds() -> Vec<Vec<u8>> {
    sample_contents()
        .iter()
        .map(|content| content.to_bytes())
        .collect()
}

fn fossil_op(input: &[u8]) -> Result<Verdict, String> {
    match fossil::op::Op::decode(input) {
        Err(_) => Ok(Verdict::Refused),
        Ok(op) => value_round_trip("op", &op, fossil::op::Op::encode, fossil::op::Op::decode),
    }
}

fn fossil_op_seeds() -> Vec<Vec<u8>> {
    use fossil::op::{DeviceId, Op, OpBody, Rights};
    use fossil::{FileKind, InodeNo};
    let content = sample_contents()
        .pop()
        .unwrap_or(fossil::op::Content::EMPTY);
    let bodies = vec![
        OpBody::Genesis {
            owner: DeviceId(1),
            uid: 1000,
            gid: 1000,
            perm: 0o755,
        },
        OpBody::Grant {
            device: DeviceId(2),
            rights: Rights::Write,
        },
        OpBody::Create {
            parent: InodeNo(1),
            name: b"notes.txt".to_vec(),
            kind: FileKind::Symlink,
            perm: 0o644,
            uid: 1,
            gid: 2,
            rdev: 3,
            target: b"../elsewhere".to_vec(),
        },
        OpBody::Write {
            ino: InodeNo(9),
            base_version: 4,
            size: 5000,
            content,
            parent: InodeNo(1),
            name: b"notes.txt".to_vec(),
        },
        OpBody::SetAttr {
            ino: InodeNo(9),
            perm: Some(0o600),
            uid: None,
            gid: Some(5),
            atime_ns: None,
            mtime_ns: Some(-1),
        },
        OpBody::Link {
            ino: InodeNo(9),
            new_parent: InodeNo(1),
            new_name: b"hard".to_vec(),
        },
        OpBody::Unlink {
            parent: InodeNo(1),
            name: b"hard".to_vec(),
            ino: InodeNo(9),
        },
        OpBody::Rename {
            parent: InodeNo(1),
            name: b"a".to_vec(),
            ino: InodeNo(9),
            new_parent: InodeNo(2),
            new_name: b"b".to_vec(),
            replaced: Some(InodeNo(10)),
            exchange: true,
        },
        OpBody::SetXattr {
            ino: InodeNo(9),
            name: b"user.tag".to_vec(),
            value: vec![0; 300],
        },
        OpBody::RemoveXattr {
            ino: InodeNo(9),
            name: b"user.tag".to_vec(),
        },
        OpBody::Reclaim { ino: InodeNo(9) },
        OpBody::Snapshot {
            name: b"before".to_vec(),
        },
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(seq, body)| {
            Op {
                author: DeviceId(1),
                seq: seq as u64 + 1,
                time_ns: 1_700_000_000_000_000_000 + seq as i64,
                body,
            }
            .encode()
        })
        .collect()
}

fn fossil_image(input: &[u8]) -> Result<Verdict, String> {
    match fossil::checkpoint::Image::decode(input) {
        Err(_) => Ok(Verdict::Refused),
        Ok(image) => round_trip("checkpoint image", input, &image.encode()),
    }
}

fn fossil_image_seeds() -> Vec<Vec<u8>> {
    use fossil::namespace::Inode;
    use fossil::op::{DeviceId, Rights};
    use fossil::{FileKind, InodeNo};
    let inode = |ino: u64, kind, content| Inode {
        ino: InodeNo(ino),
        kind,
        perm: 0o755,
        uid: 1000,
        gid: 1000,
        rdev: 0,
        nlink: 1,
        size: 4096,
        atime_ns: 1,
        mtime_ns: 2,
        ctime_ns: 3,
        crtime_ns: -4,
        version: 5,
        parent: InodeNo(1),
        content,
    };
    let contents = sample_contents();
    let image = fossil::checkpoint::Image {
        applied_end: 77,
        // Canonical: inodes in number order, the root directory first.
        inodes: [inode(1, FileKind::Dir, fossil::op::Content::EMPTY)]
            .into_iter()
            .chain(
                contents
                    .into_iter()
                    .enumerate()
                    .map(|(n, content)| inode(n as u64 + 2, FileKind::File, content)),
            )
            .collect(),
        dirents: vec![
            (InodeNo(1), b"a".to_vec(), InodeNo(2)),
            (InodeNo(1), b"b".to_vec(), InodeNo(3)),
        ],
        xattrs: vec![(InodeNo(2), b"user.x".to_vec(), b"value".to_vec())],
        authors: vec![
            (DeviceId(1), 40, Rights::Owner),
            (DeviceId(2), 3, Rights::Write),
        ],
        snapshots: vec![(b"first".to_vec(), 12, 1_700_000_000)],
    };
    vec![
        image.encode(),
        fossil::checkpoint::Image::default().encode(),
    ]
}

/// A log file is read back as whole records up to the first damaged one; opening it
/// twice gives the same entries (the torn tail is cut once, never served).
/// `volume.key`: the 48-byte form before epochs reads as epoch 0 (and re-encodes in
/// the current form); anything else must be canonical.
fn fossil_volume_key(input: &[u8]) -> Result<Verdict, String> {
    match fossil::venti_content::EpochSecrets::decode(input) {
        Err(_) => Ok(Verdict::Refused),
        Ok(secrets) if input.len() == 48 => {
            match fossil::venti_content::EpochSecrets::decode(&secrets.encode()) {
                Ok(again) if again == secrets => Ok(Verdict::Accepted),
                other => Err(format!("the 48-byte form re-reads as {other:?}")),
            }
        }
        Ok(secrets) => round_trip("volume key", input, &secrets.encode()),
    }
}

fn fossil_volume_key_seeds() -> Vec<Vec<u8>> {
    let mut two = fossil::venti_content::EpochSecrets::new([1; 16], 0, &[2; 32]);
    let one = two.clone();
    let _ = two.insert(5, &[3; 32]);
    vec![one.encode().to_vec(), two.encode().to_vec()]
}

fn fossil_log_file(input: &[u8]) -> Result<Verdict, String> {
    use fossil::log::{FileLog, Log};
    let read_all = |path: &Path| -> Result<Vec<(u64, Vec<u8>)>, String> {
        let mut log = FileLog::open(path).map_err(|error| error.to_string())?;
        log.read(log.start(), usize::MAX)
            .map_err(|error| error.to_string())
    };
    with_temp_file(input, |path| match read_all(path) {
        Err(_) => Ok(Verdict::Refused),
        Ok(first) => match read_all(path) {
            Ok(second) if second == first => Ok(Verdict::Accepted),
            other => Err(format!(
                "reopened log reads differently: {:?} then {:?}",
                first.len(),
                other.map(|entries| entries.len())
            )),
        },
    })?
}

fn fossil_log_file_seeds() -> Vec<Vec<u8>> {
    use fossil::log::{FileLog, Log};
    let written = with_temp_file(&[], |path| -> Option<Vec<u8>> {
        std::fs::remove_file(path).ok()?;
        let mut log = FileLog::open(path).ok()?;
        for n in 0..3 {
            log.append(&crate::pattern(n, 20 + n as usize * 7)).ok()?;
        }
        log.sync().ok()?;
        drop(log);
        std::fs::read(path).ok()
    });
    written.ok().flatten().into_iter().collect()
}

// ---------------------------------------------------------------------------------
// venti

fn venti_block_ref(input: &[u8]) -> Result<Verdict, String> {
    match venti::BlockRef::decode(input) {
        Err(_) => Ok(Verdict::Refused),
        Ok(block_ref) => round_trip("block ref", input, &block_ref.encode()),
    }
}

fn venti_block_ref_seeds() -> Vec<Vec<u8>> {
    vec![sample_block_ref(5).encode().to_vec()]
}

const ARENA: u32 = 7;

fn venti_arena_header(input: &[u8]) -> Result<Verdict, String> {
    let Ok(bytes) = <&[u8; venti::arena::ARENA_HEADER_BYTES as usize]>::try_from(input) else {
        return Ok(Verdict::Refused);
    };
    match venti::arena::ArenaHeader::decode(bytes, ARENA) {
        Err(_) => Ok(Verdict::Refused),
        Ok(header) => round_trip("arena header", input, &header.encode()),
    }
}

fn venti_arena_header_seeds() -> Vec<Vec<u8>> {
    vec![venti::arena::ArenaHeader { arena: ARENA }.encode().to_vec()]
}

fn venti_record_header(input: &[u8]) -> Result<Verdict, String> {
    let Ok(bytes) = <&[u8; venti::arena::RECORD_HEADER_BYTES]>::try_from(input) else {
        return Ok(Verdict::Refused);
    };
    match venti::arena::RecordHeader::decode(bytes) {
        Err(_) => Ok(Verdict::Refused),
        Ok(header) => round_trip("record header", input, &header.encode()),
    }
}

fn venti_record_header_seeds() -> Vec<Vec<u8>> {
    [venti::Class::Pinned, venti::Class::Cached]
        .into_iter()
        .map(|class| {
            venti::arena::RecordHeader {
                class,
                length: 4242,
                address: venti::Address([9; 32]),
            }
            .encode()
            .to_vec()
        })
        .collect()
}

fn sealing_keys() -> venti::keys::EpochKeys {
    venti::keys::EpochKeys::derive(&[0x33; 32], &[0x44; 16], 1)
}

fn sample_sealed() -> Option<(venti::BlockRef, Vec<u8>)> {
    venti::seal::seal(
        &sealing_keys(),
        venti::Kind::Data,
        &crate::pattern(11, 3000),
    )
    .ok()
}

/// Sealed bytes opened against the ref of the seed: a block that does not match its
/// address is refused, whatever it holds.
fn venti_sealed_block(input: &[u8]) -> Result<Verdict, String> {
    let Some((block_ref, sealed)) = sample_sealed() else {
        return Err("sealing the sample block failed".into());
    };
    match venti::seal::open(&sealing_keys(), &block_ref, input, venti::Kind::Data) {
        Err(_) => Ok(Verdict::Refused),
        Ok(content) if input == sealed && content == crate::pattern(11, 3000) => {
            Ok(Verdict::Accepted)
        }
        Ok(_) => Err("bytes other than the sealed block opened under its ref".into()),
    }
}

fn venti_sealed_block_seeds() -> Vec<Vec<u8>> {
    sample_sealed()
        .map(|(_, sealed)| sealed)
        .into_iter()
        .collect()
}
