#!/usr/bin/env bash
# compare.sh [FSBENCH_ARGS...]
#
# Runs the shared fsbench (../shared/tools/bench/fsbench.sh, or $FSBENCH) in one
# sitting on: a plain directory, gocryptfs, securefs (each if installed: apt-get install
# gocryptfs securefs fio; fio is for the random-read figures, -k skips them) and a Kith mount (release build), all on the same disk under
# $BENCH_DIR (default /var/tmp/kith-bench). Prints each file system's figures and a
# table of Kith's ratios to the others. Needs root for drop_caches. FSBENCH_ARGS go
# to fsbench.sh (e.g. -r 3 -s 1024 -R 5).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO="$PWD"
FSBENCH="${FSBENCH:-$REPO/../shared/tools/bench/fsbench.sh}"
BASE="${BENCH_DIR:-/var/tmp/kith-bench}"
[ -x "$FSBENCH" ] || { echo "compare: no fsbench at $FSBENCH" >&2; exit 2; }

cargo build --release --locked --quiet -p mountd --bin kith
KITH="${CARGO_TARGET_DIR:-$REPO/target}/release/kith"

rm -rf "$BASE"
mkdir -p "$BASE/results"
echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
MOUNTS=()
cleanup() {
    for m in "${MOUNTS[@]}"; do
        if findmnt -n "$m" >/dev/null 2>&1; then
            case "$m" in
            */kith/m) "$KITH" unmount "$m" || umount -l "$m" ;;
            *) fusermount3 -u "$m" 2>/dev/null || umount -l "$m" ;;
            esac
        fi
    done
}
trap cleanup EXIT

run() { # NAME DIR
    echo "== $1 ($2)" >&2
    "$FSBENCH" -l "$1" "${@:3}" "$2" >"$BASE/results/$1.txt"
    cat "$BASE/results/$1.txt"
}

mkdir -p "$BASE/plain"
run plain "$BASE/plain" "$@"

if command -v gocryptfs >/dev/null; then
    mkdir -p "$BASE/gocryptfs/c" "$BASE/gocryptfs/m"
    gocryptfs -q -init -extpass "echo bench" -scryptn 10 "$BASE/gocryptfs/c"
    gocryptfs -q -extpass "echo bench" "$BASE/gocryptfs/c" "$BASE/gocryptfs/m"
    MOUNTS+=("$BASE/gocryptfs/m")
    run gocryptfs "$BASE/gocryptfs/m" "$@"
fi

if command -v securefs >/dev/null; then
    mkdir -p "$BASE/securefs/c" "$BASE/securefs/m"
    securefs create --pass bench --pbkdf pkcs5-pbkdf2-hmac-sha256 -r 1000 "$BASE/securefs/c" >/dev/null
    securefs mount -b --pass bench --log "$BASE/securefs.log" "$BASE/securefs/c" "$BASE/securefs/m" >/dev/null
    for _ in $(seq 50); do findmnt -n "$BASE/securefs/m" >/dev/null && break; sleep 0.1; done
    MOUNTS+=("$BASE/securefs/m")
    run securefs "$BASE/securefs/m" "$@"
fi

mkdir -p "$BASE/kith/m"
# A benchmark store: no passphrase to type (kith status flags the mode).
export HOME="$BASE/kith/home" XDG_DATA_HOME="$BASE/kith/data" \
    XDG_CONFIG_HOME="$BASE/kith/config" XDG_RUNTIME_DIR="$BASE/kith/run" \
    KITH_KEYRING=unencrypted
"$KITH" mount "$BASE/kith/m"
MOUNTS+=("$BASE/kith/m")
run kith "$BASE/kith/m" "$@"
pid="$("$KITH" status | awk '/^pid:/{print $2}')"
echo "kith daemon peak RSS: $(awk '/VmHWM/{print $2, $3}' "/proc/$pid/status")"

echo
echo "== kith / other (same run; higher is better for rates, lower for seconds)"
python3 - "$BASE/results" <<'PY'
import sys, pathlib
d = pathlib.Path(sys.argv[1])
runs = {p.stem: {l.split()[0]: l.split()[1] for l in p.read_text().splitlines() if len(l.split()) >= 2}
        for p in d.glob("*.txt")}
others = [n for n in ("plain", "securefs", "gocryptfs") if n in runs]
kith = runs.get("kith", {})
print("%-20s %12s " % ("figure", "kith") + " ".join("%12s" % ("/" + o) for o in others))
for name, value in kith.items():
    row = "%-20s %12s " % (name, value)
    for o in others:
        try:
            row += "%12.2f " % (float(value) / float(runs[o][name]))
        except (KeyError, ValueError, ZeroDivisionError):
            row += "%12s " % "NA"
    print(row)
PY
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
