//! QUIC transport over loopback: request round trip of a 4 KiB request, and bulk
//! throughput of 64 KiB frames (16 requests in flight, 1-byte answers); and the
//! time to unlock a keyring with the recommended Argon2id parameters.
//!
//! `cargo bench -p net --bench transport`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use net::frame::Kind;
use net::identity::DeviceIdentity;
use net::quic::{Connection, Endpoint, TrustSet};

const REQUEST_BYTES: usize = 4 * 1024;
const BULK_FRAME_BYTES: usize = 64 * 1024;
const BULK_FRAMES: usize = 256;
const BULK_IN_FLIGHT: usize = 16;

fn setup(runtime: &tokio::runtime::Runtime) -> (Endpoint, Endpoint, Connection) {
    runtime.block_on(async {
        let a = DeviceIdentity::generate();
        let b = DeviceIdentity::generate();
        let a_trust = Arc::new(TrustSet::with_members([b.device_id()]));
        let b_trust = Arc::new(TrustSet::with_members([a.device_id()]));
        let localhost = "127.0.0.1:0".parse().expect("address");
        let (a_endpoint, _a_inbound) = Endpoint::bind(localhost, &a, a_trust).expect("bind a");
        let (b_endpoint, mut b_inbound) = Endpoint::bind(localhost, &b, b_trust).expect("bind b");
        tokio::spawn(async move {
            while let Some(item) = b_inbound.recv().await {
                if let Some(responder) = item.responder {
                    let body = if item.frame.kind == Kind::ECHO {
                        item.frame.body
                    } else {
                        vec![1]
                    };
                    responder.respond(Kind::ECHO, body);
                }
            }
        });
        let connection = a_endpoint
            .connect(b_endpoint.local_addr().expect("addr"), b.device_id())
            .await
            .expect("connect");
        (a_endpoint, b_endpoint, connection)
    })
}

fn transport(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (_a, _b, connection) = setup(&runtime);

    let mut group = c.benchmark_group("transport");
    group.measurement_time(Duration::from_secs(5));
    let request = vec![7u8; REQUEST_BYTES];
    group.throughput(Throughput::Bytes(REQUEST_BYTES as u64));
    group.bench_function("request_round_trip_4KiB", |bench| {
        bench.iter(|| {
            runtime.block_on(async {
                let answer = connection
                    .request(Kind::ECHO, &request)
                    .await
                    .expect("request");
                assert_eq!(answer.body.len(), REQUEST_BYTES);
            })
        })
    });

    let frame = Arc::new(vec![9u8; BULK_FRAME_BYTES]);
    group.throughput(Throughput::Bytes((BULK_FRAME_BYTES * BULK_FRAMES) as u64));
    group.sample_size(20);
    group.bench_function("bulk_64KiB_frames", |bench| {
        bench.iter(|| {
            let connection = connection.clone();
            let frame = frame.clone();
            runtime.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                for worker in 0..BULK_IN_FLIGHT {
                    let connection = connection.clone();
                    let frame = frame.clone();
                    tasks.spawn(async move {
                        for _ in (worker..BULK_FRAMES).step_by(BULK_IN_FLIGHT) {
                            connection
                                .request(Kind::BLOCK_RESPONSE, &frame)
                                .await
                                .expect("bulk request");
                        }
                    });
                }
                while let Some(done) = tasks.join_next().await {
                    done.expect("worker");
                }
            })
        })
    });
    group.finish();
}

/// Unlocking a keyring with the recommended Argon2id parameters (t=3, p=4, 64 MiB):
/// the delay a user waits at `kith` start, and an attacker's cost per guess.
fn keyring_unlock(c: &mut Criterion) {
    use net::keyring::{KdfParams, Keyring, Lock};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keyring");
    Keyring::new(DeviceIdentity::generate())
        .save(
            &path,
            Lock::Passphrase {
                passphrase: "bench passphrase",
                params: KdfParams::RECOMMENDED,
            },
        )
        .expect("save");
    let mut group = c.benchmark_group("keyring");
    group.sample_size(10);
    group.bench_function("unlock_argon2id_recommended", |bench| {
        bench.iter(|| Keyring::load(&path, Some("bench passphrase")).expect("load"))
    });
    group.finish();
}

criterion_group!(benches, transport, keyring_unlock);
criterion_main!(benches);
