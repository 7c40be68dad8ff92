//! `kill -9` of a process using a Volume at random instants: every file whose `fsync`
//! returned is intact after reopening (DESIGN.md invariant 4), with the real venti
//! store and file log.
//!
//! The test re-runs its own binary as the child (`crash_child`, which does nothing
//! unless `KITH_FOSSIL_CRASH_DIR` is set). The child creates files of mixed sizes
//! (inline, single-chunk, streamed, edited), fsyncs each, and only then records it in
//! an acknowledgement file. `KITH_LONG=1` runs more rounds.

// A test binary: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use fossil::{Caller, InodeNo, Volume};

mod common;
use common::incompressible;

const DIR_ENV: &str = "KITH_FOSSIL_CRASH_DIR";
const ME: Caller = Caller {
    uid: 1000,
    gid: 1000,
};

/// Deterministic content of file `index`: sizes from a few bytes to ~600 KB.
fn content(index: u64) -> Vec<u8> {
    let len = match index % 4 {
        0 => 10 + index as usize % 100,
        1 => 20_000,
        2 => 600_000,
        _ => 5_000 + index as usize,
    };
    incompressible(index, len)
}

/// Runs only as the child: write and fsync files until killed.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    let volume = Volume::open(&dir.join("volume")).unwrap();
    let mut acked = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("acked"))
        .unwrap();
    let first: u64 = std::env::var("KITH_FOSSIL_CRASH_FIRST")
        .unwrap()
        .parse()
        .unwrap();
    for index in first.. {
        let bytes = content(index);
        let name = OsString::from(format!("f{index}"));
        let (attr, handle) = volume
            .create(InodeNo::ROOT, &name, 0o644, ME, true)
            .unwrap();
        for (piece_index, piece) in bytes.chunks(64 << 10).enumerate() {
            volume
                .write(attr.ino, handle, (piece_index * (64 << 10)) as u64, piece)
                .unwrap();
        }
        if index % 3 == 0 {
            // An edit after the first flush: exercises spliced content.
            volume.flush(attr.ino, handle).unwrap();
            let at = bytes.len() as u64 / 2;
            volume
                .write(
                    attr.ino,
                    handle,
                    at,
                    &bytes[at as usize..(at as usize + 3).min(bytes.len())],
                )
                .unwrap();
        }
        volume.fsync(attr.ino, false).unwrap();
        volume.release(attr.ino, handle).unwrap();
        writeln!(acked, "{index}").unwrap();
        acked.sync_data().unwrap();
    }
}

fn read_file(volume: &Volume, name: &str) -> Vec<u8> {
    let attr = volume
        .lookup(InodeNo::ROOT, name.as_ref())
        .unwrap_or_else(|error| panic!("{name}: {error}"));
    let handle = volume.open_file(attr.ino).unwrap();
    let bytes = volume
        .read(attr.ino, handle, 0, attr.size as u32 + 1)
        .unwrap();
    volume.release(attr.ino, handle).unwrap();
    bytes
}

#[test]
fn kill_minus_nine_at_random_instants_keeps_every_fsynced_file() {
    let rounds = if std::env::var_os("KITH_LONG").is_some() {
        30
    } else {
        4
    };
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut first = 0u64;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(DIR_ENV, dir.path())
            .env("KITH_FOSSIL_CRASH_FIRST", first.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(300 + seed % 700));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acked: Vec<u64> = std::fs::read_to_string(dir.path().join("acked"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.parse().ok())
            .collect();
        let volume = Volume::open(&dir.path().join("volume")).unwrap();
        for &index in &acked {
            let bytes = read_file(&volume, &format!("f{index}"));
            assert!(
                bytes == content(index),
                "round {round}: f{index} damaged after kill -9"
            );
        }
        // Files created but not acknowledged may exist, with any of their states;
        // reading them must work (no logged write points at blocks that are gone).
        let mut cookie = 0;
        loop {
            let entries = volume.readdir(InodeNo::ROOT, cookie).unwrap();
            let Some(last) = entries.last() else { break };
            cookie = last.cookie;
            for entry in entries
                .iter()
                .filter(|entry| entry.name != "." && entry.name != "..")
            {
                let handle = volume.open_file(entry.attr.ino).unwrap();
                volume
                    .read(entry.attr.ino, handle, 0, entry.attr.size as u32 + 1)
                    .unwrap();
                volume.release(entry.attr.ino, handle).unwrap();
            }
        }
        first = acked.iter().max().map_or(first, |max| max + 1) + 1000;
        drop(volume);
    }
    let acked = std::fs::read_to_string(dir.path().join("acked")).unwrap_or_default();
    assert!(
        acked.lines().count() >= 3,
        "too few files acknowledged to mean anything: {acked:?}"
    );
}
