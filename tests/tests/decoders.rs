//! Every decoder of disk and peer bytes over hostile input: seeded random bytes,
//! random damage to valid encodings, every truncation and single-byte change of a
//! valid encoding, and length fields set to huge values.
//!
//! For each input: no panic; an accepted input re-encodes to the same bytes (or passes
//! the target's own check, see `kith_tests::decoders`); a tamper-evident format
//! refuses every single-byte change; and no single allocation exceeds a bound linear
//! in the input (a length prefix of 4 GiB in a 60-byte input must not allocate 4 GiB).
//! A counting global allocator measures the last point per thread.
//!
//! The default run takes seconds; `KITH_LONG=1` runs a hundred times more random
//! inputs. The same targets build as cargo-fuzz targets under `fuzz/`.

// The counting allocator is the one way to observe allocation sizes; it only forwards
// to the system allocator and records a maximum in a thread-local cell.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use kith_tests::decoders::{Target, Verdict, hex, targets};

/// Largest single allocation a decoder may make beyond its input's own size class:
/// fixed buffers (tempfile names, SQLite, hashers) fit well under it.
const ALLOCATION_SLACK_BYTES: usize = 1 << 20;
/// Decoded values may be larger than their encoding (a `Vec<Inode>` of 8-byte
/// records), but only by a constant factor.
const ALLOCATION_PER_INPUT_BYTE: usize = 64;

struct CountingAllocator;

thread_local! {
    static LARGEST_ALLOCATION_BYTES: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation(bytes: usize) {
    let _ = LARGEST_ALLOCATION_BYTES.try_with(|largest| {
        if bytes > largest.get() {
            largest.set(bytes);
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation(new_size);
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn long_run() -> bool {
    std::env::var_os("KITH_LONG").is_some_and(|value| value != "0")
}

/// xorshift64*: seeded, so every failing input is reproducible from the test alone.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: usize) -> usize {
        if bound == 0 {
            0
        } else {
            (self.next() % bound as u64) as usize
        }
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// What went wrong with one input.
#[derive(Debug)]
struct Failure {
    case: String,
    input: Vec<u8>,
    problem: String,
}

/// Runs one input through `target`, checking every property but tamper evidence.
fn check(target: &Target, case: &str, input: &[u8]) -> Result<Verdict, Failure> {
    let fail = |problem: String| Failure {
        case: case.to_owned(),
        input: input.to_vec(),
        problem,
    };
    LARGEST_ALLOCATION_BYTES.with(|largest| largest.set(0));
    let outcome = catch_unwind(AssertUnwindSafe(|| (target.decode)(input)));
    let largest = LARGEST_ALLOCATION_BYTES.with(Cell::get);
    let verdict = match outcome {
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            return Err(fail(format!("panicked: {message}")));
        }
        Ok(Err(broken)) => return Err(fail(broken)),
        Ok(Ok(verdict)) => verdict,
    };
    let bound = ALLOCATION_SLACK_BYTES + ALLOCATION_PER_INPUT_BYTE * input.len();
    if largest > bound {
        return Err(fail(format!(
            "allocated {largest} bytes at once for a {}-byte input (bound {bound})",
            input.len()
        )));
    }
    Ok(verdict)
}

/// Huge values written over every offset of a seed: whatever field sits there (a
/// length, a count, a version), the decoder must refuse or bound it.
const HUGE_FIELDS: &[&[u8]] = &[
    &[0xff, 0xff],
    &[0xff, 0xff, 0xff, 0xff],
    &[0xff, 0xff, 0xff, 0x7f],
    &[0x00, 0x00, 0x00, 0x01],
    &[0x01, 0x00, 0x00, 0x01],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
];

/// Single-byte changes tried at every offset.
fn mutations(byte: u8) -> [u8; 5] {
    [byte ^ 0x01, byte ^ 0x80, byte.wrapping_add(1), 0x00, 0xff]
}

fn fuzz_target(target: &Target, seed_index: u64) -> Result<(), Failure> {
    let seeds = (target.seeds)();
    let fail = |case: &str, input: &[u8], problem: String| Failure {
        case: case.to_owned(),
        input: input.to_vec(),
        problem,
    };
    if seeds.is_empty() {
        return Err(fail(
            "seeds",
            &[],
            "no valid encodings to start from".into(),
        ));
    }
    // The seeds themselves are accepted: otherwise every other check is vacuous.
    for seed in &seeds {
        if check(target, "seed", seed)? != Verdict::Accepted {
            return Err(fail("seed", seed, "a valid encoding is refused".into()));
        }
    }

    for seed in &seeds {
        // Every truncation, and one trailing byte too many.
        for len in 0..seed.len() {
            check(target, "truncation", seed.get(..len).unwrap_or_default())?;
        }
        let mut longer = seed.clone();
        longer.push(0);
        check(target, "trailing byte", &longer)?;

        // Every single-byte change.
        for at in 0..seed.len() {
            for value in mutations(seed[at]) {
                if value == seed[at] {
                    continue;
                }
                let mut changed = seed.clone();
                changed[at] = value;
                let verdict = check(target, "single-byte change", &changed)?;
                if target.tamper_evident && verdict == Verdict::Accepted {
                    return Err(fail(
                        "single-byte change",
                        &changed,
                        format!("accepted a change at offset {at} of a tamper-evident format"),
                    ));
                }
            }
        }

        // Huge values over every offset.
        for at in 0..seed.len() {
            for field in HUGE_FIELDS {
                let mut changed = seed.clone();
                for (offset, byte) in field.iter().enumerate() {
                    if let Some(slot) = changed.get_mut(at + offset) {
                        *slot = *byte;
                    }
                }
                check(target, "huge field", &changed)?;
            }
        }
    }

    // Seeded random inputs: fresh bytes, and seeds with random damage.
    let rounds = if long_run() { 200_000 } else { 2_000 };
    let mut rng = Rng::new(0x5eed_0000 + seed_index);
    let longest = seeds.iter().map(Vec::len).max().unwrap_or(0).max(64);
    for round in 0..rounds {
        let input = if round % 2 == 0 {
            let len = rng.below(2 * longest + 1);
            rng.bytes(len)
        } else {
            let mut input = seeds[rng.below(seeds.len())].clone();
            for _ in 0..=rng.below(4) {
                match rng.below(4) {
                    0 if !input.is_empty() => {
                        let at = rng.below(input.len());
                        input[at] = rng.next() as u8;
                    }
                    1 => {
                        let at = rng.below(input.len() + 1);
                        let extra_len = rng.below(9);
                        let extra = rng.bytes(extra_len);
                        input.splice(at..at, extra);
                    }
                    2 if !input.is_empty() => {
                        let at = rng.below(input.len());
                        let end = (at + rng.below(9)).min(input.len());
                        input.drain(at..end);
                    }
                    _ => {
                        let len = rng.below(input.len() + 1);
                        input.truncate(len);
                    }
                }
            }
            input
        };
        check(target, "random", &input)?;
    }
    Ok(())
}

fn run_target(name: &str) {
    let all = targets();
    let Some((index, target)) = all.iter().enumerate().find(|(_, t)| t.name == name) else {
        panic!("no decoder target named {name}");
    };
    if let Err(failure) = fuzz_target(target, index as u64) {
        panic!(
            "{name}: {} on a {} input ({} bytes): {}",
            failure.problem,
            failure.case,
            failure.input.len(),
            hex(&failure.input)
        );
    }
}

macro_rules! decoder_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_target(stringify!($name));
            }
        )*

        #[test]
        fn every_decoder_target_has_a_test() {
            let tested = [$(stringify!($name)),*];
            for target in targets() {
                assert!(tested.contains(&target.name), "{} has no test", target.name);
            }
            assert_eq!(tested.len(), targets().len());
        }
    };
}

decoder_tests!(
    net_frame,
    net_frame_header,
    net_entry_header,
    net_entry_open,
    net_chain_link,
    net_user_chain,
    net_user_chain_verified,
    net_keyring_protection,
    net_keyring_file,
    net_keyring_secrets,
    net_pairing_code,
    net_pairing_code_body,
    net_pairing_code_text,
    net_join_request,
    net_join_answer,
    net_key_rotation,
    net_invite,
    net_invite_body,
    net_invite_text,
    net_block_request,
    net_block_push,
    paxos_message,
    paxos_entry,
    paxos_snapshot,
    paxos_ballot,
    paxos_command,
    fossil_op,
    fossil_content,
    fossil_image,
    fossil_log_file,
    fossil_volume_key,
    venti_block_ref,
    venti_arena_header,
    venti_record_header,
    venti_sealed_block,
);

#[test]
fn the_allocation_bound_catches_a_large_allocation() {
    // The harness must be able to fail: a 16 MiB buffer for a 4-byte input is caught.
    LARGEST_ALLOCATION_BYTES.with(|largest| largest.set(0));
    let buffer = vec![0u8; 16 << 20];
    let largest = LARGEST_ALLOCATION_BYTES.with(Cell::get);
    drop(buffer);
    assert!(largest >= 16 << 20);
    assert!(largest > ALLOCATION_SLACK_BYTES + ALLOCATION_PER_INPUT_BYTE * 4);
}

/// Writes every target's valid encodings as a cargo-fuzz seed corpus when
/// `KITH_FUZZ_CORPUS=DIR` is set (`DIR/<target>/seed-N`); does nothing otherwise.
#[test]
fn write_fuzz_corpora() -> std::io::Result<()> {
    let Some(dir) = std::env::var_os("KITH_FUZZ_CORPUS") else {
        return Ok(());
    };
    for target in targets() {
        let target_dir = std::path::Path::new(&dir).join(target.name);
        std::fs::create_dir_all(&target_dir)?;
        for (n, seed) in (target.seeds)().iter().enumerate() {
            std::fs::write(target_dir.join(format!("seed-{n}")), seed)?;
        }
    }
    Ok(())
}
