//! A porcupine-style linearizability checker for client histories.
//!
//! Algorithm: Wing & Gong's search with Lowe's memoisation, as in Go porcupine
//! (Horn & Kroening's P-compositionality, <https://arxiv.org/abs/1504.00204>).
//! A history is a set of operations, each with a call time, a return time and an
//! observed output. It is linearizable when some total order of the operations
//! (a) respects real time — `a` returned before `b` was called ⇒ `a` precedes `b` —
//! and (b) replayed through the sequential model yields every observed output.
//!
//! - **Unknown outcomes.** A client that timed out does not know whether its operation
//!   took effect. Such an operation has no return time (it is treated as +∞) and no
//!   output: the search may linearize it anywhere after its call, including after every
//!   other operation, which is the same as "it never happened".
//! - **Partitioning.** Operations on different keys commute, so the history is split by
//!   key and every part is checked alone (P-compositionality); a history is
//!   linearizable iff every part is.
//! - **Memoisation.** A search node is (set of linearized operations, model state);
//!   a node already explored is never explored again.
//! - **Budget.** The search is exponential in the worst case; after `steps_max` steps
//!   it gives up with [`Verdict::Unknown`] rather than hang a CI run.
//!
//! Ties: a return and a call at the same instant are treated as concurrent. The
//! simulator stamps events with a strictly increasing counter, so ties do not occur
//! there; callers with coarse clocks get a slightly weaker (never a wrong) check.
//!
//! Not a general framework: one model (a small key-value store) plus the [`Model`]
//! trait the brute-force cross-check also uses.

// Each test binary includes this file and uses a different subset of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Clone + Debug;
    type Output: Clone + Eq + Debug;

    fn init(&self) -> Self::State;

    /// The state after `input` if the model can produce `output` from `state`;
    /// `output = None` (unknown outcome) accepts any output.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    /// True when `input` never changes the state. Such an operation with an unknown
    /// outcome constrains nothing and is left out of the search.
    fn is_read_only(&self, _input: &Self::Input) -> bool {
        false
    }
}

/// One client operation as observed from outside the system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    pub client: u64,
    pub input: I,
    pub call_time: u64,
    /// `None` when the client never learned the outcome (return time = +∞).
    pub return_time: Option<u64>,
    /// `None` exactly when `return_time` is `None`.
    pub output: Option<O>,
}

/// The checker's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// `operations` holds the indices (into the checked history) of the part that has no
    /// linearization; `longest_prefix` the longest partial linearization found, as
    /// indices, to make a dump readable.
    NotLinearizable {
        partition: String,
        operations: Vec<usize>,
        longest_prefix: Vec<usize>,
    },
    /// The step budget ran out before an answer.
    Unknown {
        steps: u64,
    },
}

/// Checks one part of a history (no partitioning). `operations` are indices into
/// `history`.
pub fn check_part<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    operations: &[usize],
    steps_max: u64,
) -> PartVerdict {
    let list = EntryList::new(history, operations);
    search(model, history, operations, list, steps_max)
}

/// The verdict on one part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartVerdict {
    Linearizable,
    NotLinearizable { longest_prefix: Vec<usize> },
    Unknown { steps: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EntryKind {
    Call,
    Return,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    kind: EntryKind,
    /// Position of the operation inside the part (0..n), used for the bitset.
    op: usize,
    /// For a call: the index of its return entry.
    matching: usize,
    prev: usize,
    next: usize,
}

/// Call and return entries in time order as a doubly linked list with a sentinel head
/// at index 0 (Knuth's dancing links: lifting an operation out and putting it back are
/// O(1) and exactly undo each other).
struct EntryList {
    entries: Vec<Entry>,
}

const HEAD: usize = 0;
const NONE: usize = usize::MAX;

impl EntryList {
    fn new<I, O>(history: &[Operation<I, O>], operations: &[usize]) -> Self {
        // (time, return-after-call at ties, op) — a missing return time sorts last.
        let mut events: Vec<(u64, EntryKind, usize)> = Vec::with_capacity(operations.len() * 2);
        for (op, &index) in operations.iter().enumerate() {
            let operation = &history[index];
            events.push((operation.call_time, EntryKind::Call, op));
            events.push((
                operation.return_time.unwrap_or(u64::MAX),
                EntryKind::Return,
                op,
            ));
        }
        events.sort_by_key(|&(time, kind, op)| (time, kind == EntryKind::Return, op));

        let mut entries = Vec::with_capacity(events.len() + 1);
        entries.push(Entry {
            kind: EntryKind::Call,
            op: NONE,
            matching: NONE,
            prev: NONE,
            next: NONE,
        });
        let mut return_entry_of = vec![NONE; operations.len()];
        for (position, &(_, kind, op)) in events.iter().enumerate() {
            let index = position + 1;
            if kind == EntryKind::Return {
                return_entry_of[op] = index;
            }
            entries.push(Entry {
                kind,
                op,
                matching: NONE,
                prev: index - 1,
                next: if position + 1 < events.len() {
                    index + 1
                } else {
                    NONE
                },
            });
        }
        entries[HEAD].next = if events.is_empty() { NONE } else { 1 };
        for entry in entries.iter_mut().skip(1) {
            if entry.kind == EntryKind::Call {
                entry.matching = return_entry_of[entry.op];
            }
        }
        Self { entries }
    }

    fn unlink(&mut self, index: usize) {
        let Entry { prev, next, .. } = self.entries[index];
        self.entries[prev].next = next;
        if next != NONE {
            self.entries[next].prev = prev;
        }
    }

    fn relink(&mut self, index: usize) {
        let Entry { prev, next, .. } = self.entries[index];
        self.entries[prev].next = index;
        if next != NONE {
            self.entries[next].prev = index;
        }
    }

    /// Removes a call and its return from the list.
    fn lift(&mut self, call: usize) {
        let matching = self.entries[call].matching;
        self.unlink(call);
        self.unlink(matching);
    }

    /// Undoes [`Self::lift`] (in reverse order).
    fn unlift(&mut self, call: usize) {
        let matching = self.entries[call].matching;
        self.relink(matching);
        self.relink(call);
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(bits: usize) -> Self {
        Self(vec![0; bits.div_ceil(64)])
    }
    fn set(&mut self, bit: usize) {
        self.0[bit / 64] |= 1 << (bit % 64);
    }
    fn clear(&mut self, bit: usize) {
        self.0[bit / 64] &= !(1 << (bit % 64));
    }
}

fn search<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    operations: &[usize],
    mut list: EntryList,
    steps_max: u64,
) -> PartVerdict {
    let mut state = model.init();
    let mut linearized = Bitset::new(operations.len());
    let mut seen: HashSet<(Bitset, M::State), BuildHasherDefault<FxHasher>> = HashSet::default();
    // (call entry lifted, state before it)
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut steps: u64 = 0;
    let mut entry = list.entries[HEAD].next;

    while list.entries[HEAD].next != NONE {
        steps += 1;
        if steps > steps_max {
            return PartVerdict::Unknown { steps };
        }
        if entry == NONE {
            // Cannot happen: the last entry in the list is always a return.
            break;
        }
        let current = list.entries[entry];
        if current.kind == EntryKind::Call {
            let operation = &history[operations[current.op]];
            if let Some(next_state) =
                model.step(&state, &operation.input, operation.output.as_ref())
            {
                let mut next_linearized = linearized.clone();
                next_linearized.set(current.op);
                if seen.insert((next_linearized.clone(), next_state.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, next_state)));
                    linearized = next_linearized;
                    list.lift(entry);
                    if stack.len() > longest.len() {
                        longest = stack
                            .iter()
                            .map(|&(call, _)| operations[list.entries[call].op])
                            .collect();
                    }
                    entry = list.entries[HEAD].next;
                    continue;
                }
            }
            entry = current.next;
        } else {
            // A return whose call is not linearized yet: backtrack.
            let Some((call, previous_state)) = stack.pop() else {
                return PartVerdict::NotLinearizable {
                    longest_prefix: longest,
                };
            };
            state = previous_state;
            linearized.clear(list.entries[call].op);
            list.unlift(call);
            entry = list.entries[call].next;
        }
    }
    PartVerdict::Linearizable
}

/// Checks a whole history, split into parts by `partition_key`.
pub fn check<M: Model, K: Ord + Debug>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    partition_key: impl Fn(&M::Input) -> K,
    steps_max: u64,
) -> Verdict {
    let mut parts: BTreeMap<K, Vec<usize>> = BTreeMap::new();
    for (index, operation) in history.iter().enumerate() {
        if operation.output.is_none() && model.is_read_only(&operation.input) {
            continue;
        }
        parts
            .entry(partition_key(&operation.input))
            .or_default()
            .push(index);
    }
    let mut steps_total = 0;
    let mut unknown = false;
    for (key, operations) in parts {
        match check_part(model, history, &operations, steps_max) {
            PartVerdict::Linearizable => {}
            PartVerdict::Unknown { steps } => {
                unknown = true;
                steps_total += steps;
            }
            PartVerdict::NotLinearizable { longest_prefix } => {
                return Verdict::NotLinearizable {
                    partition: format!("{key:?}"),
                    operations,
                    longest_prefix,
                };
            }
        }
    }
    if unknown {
        Verdict::Unknown { steps: steps_total }
    } else {
        Verdict::Linearizable
    }
}

/// Exhaustive reference checker for tiny histories (no memo, no partitioning): tries
/// every order that respects real time. Exponential — for cross-checking only.
pub fn check_brute_force<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>]) -> bool {
    fn precedes<I, O>(a: &Operation<I, O>, b: &Operation<I, O>) -> bool {
        matches!(a.return_time, Some(returned) if returned < b.call_time)
    }
    fn extend<M: Model>(
        model: &M,
        history: &[Operation<M::Input, M::Output>],
        state: &M::State,
        done: &mut Vec<bool>,
    ) -> bool {
        if done.iter().all(|&d| d) {
            return true;
        }
        for candidate in 0..history.len() {
            if done[candidate] {
                continue;
            }
            // Every operation that must precede the candidate is already placed.
            let ready = (0..history.len()).all(|other| {
                done[other] || other == candidate || !precedes(&history[other], &history[candidate])
            });
            if !ready {
                continue;
            }
            let operation = &history[candidate];
            if let Some(next) = model.step(state, &operation.input, operation.output.as_ref()) {
                done[candidate] = true;
                if extend(model, history, &next, done) {
                    return true;
                }
                done[candidate] = false;
            }
        }
        false
    }
    let mut done = vec![false; history.len()];
    extend(model, history, &model.init(), &mut done)
}

/// The key-value store the simulated clients use: a few string keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvInput {
    Put { key: String, value: String },
    Append { key: String, value: String },
    Get { key: String },
}

impl KvInput {
    pub fn key(&self) -> &str {
        match self {
            Self::Put { key, .. } | Self::Append { key, .. } | Self::Get { key } => key,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// A put or append took effect.
    Done,
    /// A get's answer; `None` when the key was never written.
    Value(Option<String>),
}

/// The whole store, as a sequential specification. Partitioned histories hold one key
/// per part, so the map then has at most one entry.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvModel;

impl KvModel {
    /// Applies an input to a store, returning the output — the reference semantics the
    /// simulator's state machine also uses.
    pub fn apply(store: &mut BTreeMap<String, String>, input: &KvInput) -> KvOutput {
        match input {
            KvInput::Put { key, value } => {
                store.insert(key.clone(), value.clone());
                KvOutput::Done
            }
            KvInput::Append { key, value } => {
                store.entry(key.clone()).or_default().push_str(value);
                KvOutput::Done
            }
            KvInput::Get { key } => KvOutput::Value(store.get(key).cloned()),
        }
    }
}

impl Model for KvModel {
    type State = BTreeMap<String, String>;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Self::State {
        BTreeMap::new()
    }

    fn step(
        &self,
        state: &Self::State,
        input: &KvInput,
        output: Option<&KvOutput>,
    ) -> Option<Self::State> {
        let mut next = state.clone();
        let produced = Self::apply(&mut next, input);
        match output {
            Some(observed) if *observed != produced => None,
            _ => Some(next),
        }
    }

    fn is_read_only(&self, input: &KvInput) -> bool {
        matches!(input, KvInput::Get { .. })
    }
}

/// Checks a key-value history, partitioned by key.
pub fn check_kv(history: &[Operation<KvInput, KvOutput>], steps_max: u64) -> Verdict {
    check(
        &KvKeyModel,
        history,
        |input| input.key().to_owned(),
        steps_max,
    )
}

/// The value of one key, for searching one partition: cheap to clone (shared) and to
/// hash (a fingerprint computed once per write), since the memo clones and hashes a
/// state at every step and appended values grow long.
#[derive(Clone, Debug, Default)]
pub struct KeyValue {
    fingerprint: u64,
    value: Option<Arc<str>>,
}

impl KeyValue {
    fn new(value: Option<String>) -> Self {
        let fingerprint = match &value {
            None => 0,
            Some(v) => {
                let mut hasher = FxHasher::default();
                hasher.write(v.as_bytes());
                hasher.finish() | 1
            }
        };
        Self {
            fingerprint,
            value: value.map(Arc::from),
        }
    }

    fn get(&self) -> Option<&str> {
        self.value.as_deref()
    }
}

impl PartialEq for KeyValue {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint && self.value == other.value
    }
}

impl Eq for KeyValue {}

impl Hash for KeyValue {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.fingerprint.hash(state);
    }
}

/// [`KvModel`] restricted to one key (a partition): same semantics, cheaper state.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvKeyModel;

impl Model for KvKeyModel {
    type State = KeyValue;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> KeyValue {
        KeyValue::default()
    }

    fn step(
        &self,
        state: &KeyValue,
        input: &KvInput,
        output: Option<&KvOutput>,
    ) -> Option<KeyValue> {
        match input {
            KvInput::Get { .. } => match output {
                Some(KvOutput::Value(seen)) if seen.as_deref() != state.get() => None,
                Some(KvOutput::Done) => None,
                _ => Some(state.clone()),
            },
            KvInput::Put { value, .. } => match output {
                Some(KvOutput::Value(_)) => None,
                _ => Some(KeyValue::new(Some(value.clone()))),
            },
            KvInput::Append { value, .. } => match output {
                Some(KvOutput::Value(_)) => None,
                _ => {
                    let mut next = state.get().unwrap_or_default().to_owned();
                    next.push_str(value);
                    Some(KeyValue::new(Some(next)))
                }
            },
        }
    }

    fn is_read_only(&self, input: &KvInput) -> bool {
        matches!(input, KvInput::Get { .. })
    }
}

/// FxHash (rustc's hasher): fast and good enough for a memo of trusted keys.
#[derive(Clone, Copy, Debug, Default)]
pub struct FxHasher {
    hash: u64,
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.hash = (self.hash.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(SEED);
        }
    }

    fn write_u64(&mut self, value: u64) {
        const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        self.hash = (self.hash.rotate_left(5) ^ value).wrapping_mul(SEED);
    }

    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}
