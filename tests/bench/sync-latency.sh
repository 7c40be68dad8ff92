#!/usr/bin/env bash
# sync-latency.sh — A->B propagation latency of Kith between three devices (separate
# daemons, stores and FUSE mounts) on one machine, everything on 127.0.0.1; commit
# throughput across the three daemons; each daemon's memory. The scenarios and the
# output format are those of ../shared/tools/bench/syncthing-latency.sh, so the two can
# be quoted side by side (-S runs it in the same invocation).
#
# Usage: tests/bench/sync-latency.sh [options]
#   -r N      repetitions per scenario (default 5)
#   -s LIST   scenarios (default new4k,big,edit1,rename,delete,burst)
#   -b MB     size of the big file in MB, 10^6 bytes (default 100)
#   -n N      files in the burst scenario, 4 KiB each (default 1000)
#   -i MS     poll interval on B in ms (default 1)
#   -T SECS   bound of every wait, per repetition (default 120)
#   -t SECS   duration of the commit-throughput run (default 10; 0 skips it)
#   -P N      writer processes per device in the throughput run (default 4)
#   -K PATH   the kith binary (default: cargo build --release, then target/release/kith)
#   -o DIR    where results.tsv and summary.txt go (default: a new kept directory
#             ${TMPDIR:-/tmp}/sync-latency.XXXXXX)
#   -S        also run syncthing-latency.sh with the same scenarios, repetitions, sizes
#             and poll interval, modes w1 and api (installs syncthing with apt-get if
#             missing; its output follows)
#   -k        keep the scratch directory (stores, mounts, logs) instead of removing it
#   -h        help
#
# Needs: /dev/fuse and fusermount3 (or root), python3.
# Devices: A creates the user and the home volume, B and C join with `kith device add` /
# `kith device join` (unencrypted keyrings, KITH_KEYRING=unencrypted), all three mount
# with `--listen 127.0.0.1:0`: three voters, so a write commits with any two.
# Scenarios (timed from the return of the writer's fsync on A -- for rename/delete: of
# the fsync of the parent directory; for burst: of the last file's fsync -- until B shows
# the right content; checks (open + read + compare) run every -i ms). Two metrics:
# "complete" ends when the successful check has finished (for Kith the read includes
# fetching the blocks from A, so this is when the content has been read on B);
# "poll_start" is when that check started, as syncthing-latency.sh stamps it (compare
# this one with its figures). new4k and big also report "fsync": how long the writer's
# fsync call took (it includes handing the new blocks to another voter), and
# "write_fsync" the whole create + write + fsync.
#   new4k      create s-R.bin, 4 KiB random                 -> B reads it, bytes equal
#   big        create big-R.bin, -b MB random, 1 MiB writes -> B's copy has the sha256
#   edit1      overwrite 1 byte in the middle of big-0.bin  -> B's copy has the new sha256
#   (big and edit1 poll with syncthing-latency.sh's own check: stat B's copy, hash it
#   only when (inode, size, mtime) changed; so poll_start is when B showed the change,
#   and complete adds reading and hashing the whole file on B)
#   rename     s-R.bin -> s-R.renamed.bin                   -> new name right AND old gone
#   delete     unlink s-R.renamed.bin                       -> gone on B
#   burst      mkdir burst-R, -n files of 4 KiB, each fsynced -> all on B, bytes equal
# Throughput: -P processes on each of the three mounts create 100-byte files, each with
# fsync, for -t seconds; ops/s = fsynced creates of all processes / seconds.
# Memory: VmRSS and VmHWM (peak) of each daemon after the run.
#
# stdout: one line per figure: "kith scenario metric median min max n unit(s) [timeouts]",
# then "kith throughput ...", "kith rss ..."; per-run values go to stderr prefixed
# with '#', and to DIR/results.tsv. Every daemon started is unmounted (or killed by its
# pid) on exit, also on Ctrl-C / TERM.
set -u -o pipefail

REPS=5 SCEN="new4k,big,edit1,rename,delete,burst" BIG_MB=100 NFILES=1000 POLL_MS=1
BOUND=120 TP_SECS=10 TP_PROCS=4 KITH="" OUT="" SYNCTHING=0 KEEP=0
usage() { sed -n '2,45p' "$0" | sed 's/^# \{0,1\}//'; }
while getopts "r:s:b:n:i:T:t:P:K:o:Skh" o; do
  case "$o" in
    r) REPS=$OPTARG ;; s) SCEN=$OPTARG ;; b) BIG_MB=$OPTARG ;; n) NFILES=$OPTARG ;;
    i) POLL_MS=$OPTARG ;; T) BOUND=$OPTARG ;; t) TP_SECS=$OPTARG ;; P) TP_PROCS=$OPTARG ;;
    K) KITH=$OPTARG ;; o) OUT=$OPTARG ;; S) SYNCTHING=1 ;; k) KEEP=1 ;;
    h) usage; exit 0 ;; *) usage >&2; exit 2 ;;
  esac
done
command -v python3 >/dev/null || { echo "sync-latency: python3 is required" >&2; exit 2; }
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
if [ -z "$KITH" ]; then
  (cd "$REPO" && cargo build --release --quiet -p mountd --bin kith) || exit 2
  KITH="${CARGO_TARGET_DIR:-$REPO/target}/release/kith"
fi
[ -x "$KITH" ] || { echo "sync-latency: no kith binary at $KITH" >&2; exit 2; }

# Mount paths stay short (FUSE and the control socket path).
SCRATCH=$(mktemp -d /tmp/ksl.XXXXXX) || exit 2
if [ -z "$OUT" ]; then OUT=$(mktemp -d "${TMPDIR:-/tmp}/sync-latency.XXXXXX") || exit 2; fi
mkdir -p "$OUT" || exit 2
DEVICES="a b c"

log() { echo "# $*" >&2; }
kith_as() {
  local d=$1; shift
  env HOME="$SCRATCH/$d" XDG_DATA_HOME="$SCRATCH/$d/data" XDG_CONFIG_HOME="$SCRATCH/$d/config" \
      XDG_RUNTIME_DIR="$SCRATCH/$d/run" KITH_KEYRING=unencrypted "$KITH" "$@"
}
daemon_pid() {
  sed -n 's/^pid \([0-9]*\).*/\1/p' "$SCRATCH/$1/data/kith/store/kith-daemon.lock" 2>/dev/null | head -1
}
cleanup() {
  trap - EXIT INT TERM
  local d pid
  for d in $DEVICES; do
    [ -d "$SCRATCH/$d/m" ] || continue
    if findmnt -n "$SCRATCH/$d/m" >/dev/null 2>&1; then
      pid=$(daemon_pid "$d")
      kith_as "$d" unmount "$SCRATCH/$d/m" >/dev/null 2>&1 \
        || { [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; fusermount3 -u -z "$SCRATCH/$d/m" 2>/dev/null || umount -l "$SCRATCH/$d/m" 2>/dev/null; }
    fi
  done
  if [ "$KEEP" = 1 ]; then log "scratch kept in $SCRATCH"; else rm -rf "$SCRATCH"; fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# Three devices of one user.
for d in $DEVICES; do mkdir -p "$SCRATCH/$d/m"; done
kith_as a mount "$SCRATCH/a/m" --listen 127.0.0.1:0 >&2 || exit 2
for d in b c; do
  code=$(kith_as a device add | head -1) || exit 2
  kith_as "$d" device join "$code" >&2 || exit 2
  kith_as "$d" mount "$SCRATCH/$d/m" --listen 127.0.0.1:0 >&2 || exit 2
done
for _ in $(seq 1 600); do
  online=$(kith_as c status --json 2>/dev/null | python3 -c \
    'import json,sys; s=json.load(sys.stdin); print(sum(d["online"] for d in s["devices"]))' 2>/dev/null)
  [ "${online:-0}" = 3 ] && break
  sleep 0.1
done
[ "${online:-0}" = 3 ] || { log "the three devices never saw each other online"; exit 2; }
PIDS="$(daemon_pid a) $(daemon_pid b) $(daemon_pid c)"
log "devices up: pids $PIDS, kith $KITH"

python3 - "$SCRATCH/a/m" "$SCRATCH/b/m" "$SCRATCH/c/m" "$OUT" <<PYEOF
import hashlib, os, statistics, sys, time, multiprocessing

A, B, C, OUT = sys.argv[1:5]
REPS, BOUND, INTERVAL = $REPS, $BOUND, $POLL_MS / 1000.0
SCEN = "$SCEN".split(",")
BIG = $BIG_MB * 1000 * 1000
NFILES, TP_SECS, TP_PROCS = $NFILES, $TP_SECS, $TP_PROCS
PIDS = "$PIDS".split()
mono = time.monotonic
results = open(os.path.join(OUT, "results.tsv"), "a")


def log(*a):
    print("#", *a, file=sys.stderr, flush=True)


last_fsync = [0.0, 0.0]


def write_fsync(path, data):
    opened = mono()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        mv, off = memoryview(data), 0
        while off < len(data):
            off += os.write(fd, mv[off:off + (1 << 20)])
        started = mono()
        os.fsync(fd)
        done = mono()
        last_fsync[0] = done - started
        last_fsync[1] = done - opened
        return done
    finally:
        os.close(fd)


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
        return mono()
    finally:
        os.close(fd)


def read_or_none(path):
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except (FileNotFoundError, IsADirectoryError):
        return None


def sha(path):
    h = hashlib.sha256()
    try:
        with open(path, "rb", buffering=0) as fh:
            while True:
                b = fh.read(1 << 22)
                if not b:
                    return h.digest()
                h.update(b)
    except FileNotFoundError:
        return None


def sig(path):
    try:
        s = os.stat(path)
        return (s.st_ino, s.st_size, s.st_mtime_ns)
    except FileNotFoundError:
        return None


class BigCheck:
    """syncthing-latency.sh's check for big files, verbatim in behaviour: True once path
    has the wanted sha256; re-hashed only when (ino, size, mtime) changes or every 5 s,
    primed with B's state before the write. Cheap polls until the change shows, so the
    start of the poll that succeeds is when B showed the change."""
    def __init__(self, path, size, digest):
        self.path, self.size, self.digest = path, size, digest
        self.last, self.hashed_at = sig(path), mono()

    def __call__(self):
        s = sig(self.path)
        if s is None or s[1] != self.size:
            self.last = s
            return False
        if s != self.last or mono() - self.hashed_at > 5.0:
            self.last = s
            ok = sha(self.path) == self.digest
            self.hashed_at = mono()
            return ok
        return False


def poll(check, t0):
    """(start, end): seconds from t0 to the start of the check that succeeded (what
    syncthing-latency.sh reports) and to its end (the open, the read of every byte and
    the compare done: fetching the blocks is part of being readable); None on timeout."""
    end = t0 + BOUND
    while True:
        started = mono()
        if check():
            return (started - t0, mono() - t0)
        if mono() > end:
            return None
        time.sleep(INTERVAL)


figures = {}


def record(scen, rep, times, fsync=None):
    metrics = [("complete", times and times[1]), ("poll_start", times and times[0])]
    if fsync is not None:
        metrics += [("fsync", fsync[0]), ("write_fsync", fsync[1])]
    for metric, seconds in metrics:
        figures.setdefault((scen, metric), []).append(seconds)
        shown = "timeout" if seconds is None else f"{seconds:.4f}"
        log(f"kith {scen} {metric} rep {rep}: {shown}")
        results.write(f"kith\t{scen}\t{rep}\t{metric}\t{shown}\n")
    results.flush()


def settle():
    time.sleep(0.2)


big0 = None
for rep in range(REPS):
    for scen in SCEN:
        name = f"s-{rep}.bin"
        if scen == "new4k":
            data = os.urandom(4096)
            t0 = write_fsync(os.path.join(A, name), data)
            record(scen, rep, poll(lambda: read_or_none(os.path.join(B, name)) == data, t0),
                   list(last_fsync))
        elif scen == "big":
            data = bytearray(os.urandom(BIG))
            path = f"big-{rep}.bin"
            if big0 is None:
                big0 = data
            digest = hashlib.sha256(data).digest()
            check = BigCheck(os.path.join(B, path), BIG, digest)
            t0 = write_fsync(os.path.join(A, path), data)
            record(scen, rep, poll(check, t0), list(last_fsync))
        elif scen == "edit1":
            if big0 is None:
                log("edit1 needs big first; skipped")
                continue
            middle = BIG // 2
            big0[middle] ^= 0xFF
            digest = hashlib.sha256(big0).digest()
            check = BigCheck(os.path.join(B, "big-0.bin"), BIG, digest)
            fd = os.open(os.path.join(A, "big-0.bin"), os.O_WRONLY)
            try:
                os.pwrite(fd, bytes(big0[middle:middle + 1]), middle)
                os.fsync(fd)
                t0 = mono()
            finally:
                os.close(fd)
            record(scen, rep, poll(check, t0))
        elif scen == "rename":
            src, dst = os.path.join(A, name), os.path.join(A, f"s-{rep}.renamed.bin")
            if not os.path.exists(src):
                write_fsync(src, os.urandom(4096))
                poll(lambda: os.path.exists(os.path.join(B, name)), mono())
            data = read_or_none(src)
            os.rename(src, dst)
            t0 = fsync_dir(A)
            record(scen, rep, poll(
                lambda: read_or_none(os.path.join(B, f"s-{rep}.renamed.bin")) == data
                and not os.path.lexists(os.path.join(B, name)), t0))
        elif scen == "delete":
            path = f"s-{rep}.renamed.bin"
            if not os.path.exists(os.path.join(A, path)):
                write_fsync(os.path.join(A, path), os.urandom(4096))
                poll(lambda: os.path.exists(os.path.join(B, path)), mono())
            os.unlink(os.path.join(A, path))
            t0 = fsync_dir(A)
            record(scen, rep, poll(lambda: not os.path.lexists(os.path.join(B, path)), t0))
        elif scen == "burst":
            d = f"burst-{rep}"
            os.mkdir(os.path.join(A, d))
            files = {f"f{i}": os.urandom(4096) for i in range(NFILES)}
            for n, b in files.items():
                t0 = write_fsync(os.path.join(A, d, n), b)

            def burst_done():
                try:
                    names = set(os.listdir(os.path.join(B, d)))
                except FileNotFoundError:
                    return False
                return all(n in names for n in files) and all(
                    read_or_none(os.path.join(B, d, n)) == b for n, b in files.items())
            record(scen, rep, poll(burst_done, t0))
        else:
            log(f"unknown scenario {scen}")
        settle()

summary = []
for scen, metric in [(s, m) for s in SCEN for m in ("complete", "poll_start", "fsync", "write_fsync")]:
    values = figures.get((scen, metric), [])
    if not values:
        continue
    ok = [v for v in values if v is not None]
    timeouts = len(values) - len(ok)
    if ok:
        line = (f"kith {scen} {metric} {statistics.median(ok):.4f} {min(ok):.4f} {max(ok):.4f} "
                f"{len(ok)} s" + (f" timeouts={timeouts}" if timeouts else ""))
    else:
        line = f"kith {scen} {metric} - - - 0 s timeouts={timeouts}"
    summary.append(line)
    print(line, flush=True)


def writer(mount, tag, seconds, counter):
    os.makedirs(os.path.join(mount, "tp"), exist_ok=True)
    end, n = mono() + seconds, 0
    body = b"x" * 100
    while mono() < end:
        write_fsync(os.path.join(mount, "tp", f"{tag}-{n}"), body)
        n += 1
    with counter.get_lock():
        counter.value += n


if TP_SECS > 0:
    for m in (A, B, C):
        os.makedirs(os.path.join(m, "tp"), exist_ok=True)
    time.sleep(1)
    counter = multiprocessing.Value("q", 0)
    procs = [multiprocessing.Process(target=writer, args=(m, f"{i}-{p}", TP_SECS, counter))
             for i, m in enumerate((A, B, C)) for p in range(TP_PROCS)]
    started = mono()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    elapsed = mono() - started
    line = (f"kith throughput fsynced_creates {counter.value / elapsed:.1f} ops/s "
            f"({counter.value} in {elapsed:.1f} s, {len(procs)} processes on 3 devices)")
    summary.append(line)
    print(line, flush=True)

for name, pid in zip("abc", PIDS):
    status = {}
    with open(f"/proc/{pid}/status") as fh:
        for l in fh:
            k, _, v = l.partition(":")
            status[k] = v.strip()
    line = f"kith rss device={name} pid={pid} VmRSS={status.get('VmRSS')} VmHWM={status.get('VmHWM')}"
    summary.append(line)
    print(line, flush=True)

with open(os.path.join(OUT, "summary.txt"), "a") as fh:
    fh.write("\n".join(summary) + "\n")
PYEOF
rc=$?

if [ "$SYNCTHING" = 1 ]; then
  ST="$REPO/../shared/tools/bench/syncthing-latency.sh"
  # The peer is installed by this script, not by hand (Debian's syncthing package).
  if ! command -v syncthing >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    log "installing syncthing"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq syncthing; } \
      >/dev/null 2>&1 || log "could not install syncthing"
  fi
  if [ -x "$ST" ] || [ -f "$ST" ]; then
    log "running $ST"
    bash "$ST" -r "$REPS" -m w1,api -s "$SCEN" -b "$BIG_MB" -n "$NFILES" -i "$POLL_MS" \
      -c none -o "$OUT/syncthing" || rc=1
  else
    log "no $ST"; rc=1
  fi
fi
log "results in $OUT"
exit "$rc"
