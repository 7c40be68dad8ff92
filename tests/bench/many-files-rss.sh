#!/usr/bin/env bash
# many-files-rss.sh [-n FILES] [-d DIRS] [-i IDLE_S] [-c CHECKPOINT_OPS]... [-m]
#
# Daemon memory with many small files (issue 3: under 200 MB with 100,000 files). For
# each checkpoint setting (-c, repeatable; default: "0" = never, then the default
# bound), mounts a fresh single-device Kith store (release build), creates FILES files
# of a few bytes each in DIRS directories, and prints the daemon's VmRSS and VmHWM
# right after, and again after IDLE_S seconds of idle (the background checkpoint and
# log truncation run meanwhile), with the sizes of paxos.sqlite and namespace.sqlite
# and the largest resident mappings (smaps). -m also runs each setting with
# MALLOC_ARENA_MAX=2 (glibc arenas: fragmentation vs. the thread count). -t then has
# gdb call malloc_trim(0) in the daemon and reports again: what drops is memory glibc
# kept after it was freed, not live data.
#
# Example: tests/bench/many-files-rss.sh -n 100000 -c 0 -c default
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO="$PWD"
FILES=100000
DIRS=100
IDLE_S=20
SETTINGS=()
ARENAS=("")
TRIM=0
while getopts "n:d:i:c:mt" opt; do
    case "$opt" in
    n) FILES="$OPTARG" ;;
    d) DIRS="$OPTARG" ;;
    i) IDLE_S="$OPTARG" ;;
    c) SETTINGS+=("$OPTARG") ;;
    m) ARENAS=("" 2) ;;
    t) TRIM=1 ;;
    *) sed -n "2,16p" "$0" >&2; exit 2 ;;
    esac
done
[ ${#SETTINGS[@]} -gt 0 ] || SETTINGS=(0 default)

cargo build --release --quiet -p mountd --bin kith
KITH="${CARGO_TARGET_DIR:-$REPO/target}/release/kith"
BASE="$(mktemp -d "${BENCH_DIR:-/var/tmp}/kith-rss.XXXXXX")"
MNT=""
cleanup() {
    if [ -n "$MNT" ] && findmnt -n "$MNT" >/dev/null 2>&1; then
        "$KITH" unmount "$MNT" >/dev/null || umount -l "$MNT"
    fi
    rm -rf "$BASE"
}
trap cleanup EXIT

mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
field() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$2/status"; }
size_of() { [ -e "$1" ] && du -k --apparent-size "$1" | awk '{ print $1 }' || echo 0; }

report() { # LABEL PID STORE
    local rss hwm
    rss="$(field VmRSS "$2")"
    hwm="$(field VmHWM "$2")"
    printf '  %-10s VmRSS %s  VmHWM %s  paxos.sqlite %s (+wal %s)  namespace.sqlite %s (+wal %s)\n' \
        "$1" "$(mib "$rss")" "$(mib "$hwm")" \
        "$(mib "$(size_of "$3/paxos.sqlite")")" "$(mib "$(size_of "$3/paxos.sqlite-wal")")" \
        "$(mib "$(size_of "$3/namespace.sqlite")")" "$(mib "$(size_of "$3/namespace.sqlite-wal")")"
}

smaps_top() { # PID: the five largest resident mappings
    awk '/^[0-9a-f]+-[0-9a-f]+ / { name = ($6 == "" ? "[anon]" : $6) }
         /^Rss:/ { rss[name] += $2 }
         END { for (n in rss) printf "%d %s\n", rss[n], n }' "/proc/$1/smaps" |
        sort -rn | head -5 | awk '{ printf "    smaps %-40s %.1f MiB\n", $2, $1 / 1024 }'
}

echo "many-files-rss: $FILES files in $DIRS dirs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for arenas in "${ARENAS[@]}"; do
    for setting in "${SETTINGS[@]}"; do
        run="$BASE/run-$setting-${arenas:-default}"
        mkdir -p "$run/m" "$run/config/kith"
        MNT="$run/m"
        if [ "$setting" != default ]; then
            echo "checkpoint_ops = $setting" >"$run/config/kith/config.toml"
        fi
        export HOME="$run/home" XDG_DATA_HOME="$run/data" XDG_CONFIG_HOME="$run/config" \
            XDG_RUNTIME_DIR="$run/run" KITH_KEYRING=unencrypted
        if [ -n "$arenas" ]; then export MALLOC_ARENA_MAX="$arenas"; else unset MALLOC_ARENA_MAX; fi
        "$KITH" mount "$MNT" --listen 127.0.0.1:0 >/dev/null
        pid="$("$KITH" status | awk '/^pid:/ { print $2 }')"
        store="$run/data/kith/store"
        echo "== checkpoint_ops=$setting${arenas:+ MALLOC_ARENA_MAX=$arenas} (daemon pid $pid)"
        report "mounted" "$pid" "$store"
        # Each create's latency too: a checkpoint that stalled requests shows in the
        # tail (compare checkpoint_ops=0).
        python3 - "$MNT" "$FILES" "$DIRS" <<'PY'
import os, sys, time
mnt, files, dirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
per_dir = -(-files // dirs)
lat = []
start = time.monotonic()
for n in range(files):
    d = os.path.join(mnt, f"d{n // per_dir}")
    if n % per_dir == 0:
        os.mkdir(d)
    t = time.monotonic()
    with open(os.path.join(d, f"f{n % per_dir}"), "w") as f:
        f.write(f"file {n}\n")
    lat.append(time.monotonic() - t)
took = time.monotonic() - start
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
print(f"  created {files} files in {took:.1f} s ({files / took:.0f}/s); create+write+close "
      f"p50 {q(0.5):.2f} ms, p99 {q(0.99):.2f} ms, p99.99 {q(0.9999):.1f} ms, max {lat[-1] * 1000:.1f} ms")
PY
        report "created" "$pid" "$store"
        sleep "$IDLE_S"
        report "idle ${IDLE_S}s" "$pid" "$store"
        smaps_top "$pid"
        if [ "$TRIM" = 1 ] && command -v gdb >/dev/null; then
            gdb -p "$pid" -batch -ex 'call (int) malloc_trim(0)' >/dev/null 2>&1 || true
            report "trimmed" "$pid" "$store"
        fi
        if command -v sqlite3 >/dev/null; then
            sqlite3 "file:$store/paxos.sqlite?mode=ro" \
                "SELECT '  paxos log: ' || count(*) || ' entries from slot ' || ifnull(min(slot), '-') FROM committed" ||
                true
        fi
        "$KITH" unmount "$MNT" >/dev/null
        MNT=""
    done
done
