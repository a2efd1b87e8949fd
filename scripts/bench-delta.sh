#!/usr/bin/env bash
# Benchmark of delta updates (issue 18). Builds three pairs of real images and reports, per pair,
# the bytes a device fetches with:
#   - a full download (the new image as is);
#   - our chunk delta (agent/examples/bench_delta.rs: the agent's real Downloader over loopback
#     HTTP, the old image in its cache), for several FastCDC parameter sets, index included;
#   - casync (Debian package): chunk files of the new image's store that the old image's store
#     lacks (compressed, as casync stores them) plus the new .caibx index;
#   - the best static per-pair deltas: `zstd -19 --long=31 --patch-from=old` and `bsdiff`
#     (bsdiff only up to BSDIFF_MAX_MIB: it needs ~17x the old file in memory);
# plus our delta's apply time against the full download's, and the peak RSS of both.
#
# Pairs:
#   1 rootfs-small: ext4 images of two `debootstrap --variant=minbase` trees of Debian bookworm,
#     the second with a few more packages (--include=$SMALL_EXTRA);
#   2 ota-agent: the release binary of this repository at commit $AGENT_OLD and at $AGENT_NEW
#     (a real 11-line change in core/src/update, linked into the agent), built in a temporary
#     git worktree;
#   3 rootfs-large: the minbase image against one with many more packages (--include=$LARGE_EXTRA).
#
# Usage: bash scripts/bench-delta.sh            (work dir $OTA_BENCH_DELTA_DIR, default
#                                                /tmp/ota-bench-delta, reused when present)
# Env: PARAMS="min:avg:max ..." (bytes), DEFAULT_PARAMS (the set the ratios use),
#      BSDIFF_MAX_MIB (default 128), PAIRS (default "1 2 3").
# Needs root for debootstrap; installs casync, bsdiff, zstd, debootstrap, e2fsprogs, jq when
# missing. Uses the Debian mirror (and proxy) apt uses on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=${OTA_BENCH_DELTA_DIR:-/tmp/ota-bench-delta}
params=${PARAMS:-"4096:16384:65536 8192:32768:131072 16384:65536:262144"}
default_params=${DEFAULT_PARAMS:-16384:65536:262144}
bsdiff_max_mib=${BSDIFF_MAX_MIB:-128}
pairs=${PAIRS:-"1 2 3"}
suite=bookworm
small_extra=${SMALL_EXTRA:-"curl,less,nano"}
large_extra=${LARGE_EXTRA:-"python3,perl,git,openssh-server,systemd,systemd-sysv,iproute2,vim,build-essential"}
agent_new=${AGENT_NEW:-584800d}
agent_old=${AGENT_OLD:-$agent_new~1}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}

log() { echo "[bench-delta $(date +%H:%M:%S)] $*" >&2; }

mkdir -p "$work"
log "work dir: $work"

# --- tools -----------------------------------------------------------------------------------
missing=()
for t in casync:casync bsdiff:bsdiff zstd:zstd debootstrap:debootstrap mke2fs:e2fsprogs jq:jq; do
  command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- the mirror apt uses -----------------------------------------------------------------------
mirror=$(apt-get indextargets --format '$(URI)' | grep "/dists/$suite/" | head -1 | sed 's#/dists/.*##')
mirror=${mirror:-http://deb.debian.org/debian}
eval "$(apt-config shell apt_proxy Acquire::http::Proxy)"
if [ -n "${apt_proxy:-}" ]; then export http_proxy=$apt_proxy; fi
log "mirror: $mirror${apt_proxy:+ (proxy $apt_proxy)}"

# --- pair builders -------------------------------------------------------------------------------
# rootfs NAME INCLUDES: a debootstrap tree in $work/NAME.root (kept once complete).
rootfs() {
  local name=$1 include=$2 dir=$work/$1.root
  if [ -f "$dir.done" ]; then log "rootfs $name: reusing $dir"; return; fi
  rm -rf "$dir"
  mkdir -p "$work/debs"
  log "rootfs $name: debootstrap --variant=minbase $suite${include:+ --include=$include}"
  debootstrap --variant=minbase --cache-dir="$work/debs" ${include:+--include="$include"} \
    "$suite" "$dir" "$mirror" >"$work/$name.debootstrap.log" 2>&1
  touch "$dir.done"
}

# image TREE IMG SIZE_MIB: an ext4 image of TREE (mke2fs -d), fixed size, fixed UUID, hash seed
# and time, so only the tree's contents make two images differ.
image() {
  local tree=$1 img=$2 size=$3
  if [ -f "$img" ]; then log "image $(basename "$img"): reusing"; return; fi
  log "image $(basename "$img"): ext4, ${size} MiB, from $(basename "$tree")"
  E2FSPROGS_FAKE_TIME=1700000000 mke2fs -q -F -t ext4 -b 4096 -m 0 -L rootfs \
    -U 6f7a1c2e-0b1d-4c55-9a39-0d7e5e3c1a01 \
    -E root_owner=0:0,hash_seed=6f7a1c2e-0b1d-4c55-9a39-0d7e5e3c1a01,lazy_itable_init=0 \
    -d "$tree" "$img.tmp" "${size}M" >"$img.mke2fs.log" 2>&1
  mv "$img.tmp" "$img"
}

# size_for TREE...: MiB for an image holding the largest tree with 30% room, rounded to 64 MiB.
size_for() {
  local kib=0 k
  for t in "$@"; do
    k=$(du -sk --apparent-size "$t" | cut -f1)
    if [ "$k" -gt "$kib" ]; then kib=$k; fi
  done
  echo $(( (kib * 13 / 10 / 1024 / 64 + 1) * 64 ))
}

# agent_binary COMMIT OUT: the stripped release ota-agent of COMMIT.
agent_binary() {
  local commit=$1 out=$2 wt=$work/agent-src
  if [ -f "$out" ]; then log "ota-agent $commit: reusing"; return; fi
  if [ ! -d "$wt" ]; then git worktree add --detach "$wt" "$commit" >/dev/null 2>&1; fi
  git -C "$wt" checkout -q --detach "$commit"
  log "ota-agent $commit: cargo build --release (in $wt)"
  (cd "$wt" && cargo build --release -q -p ota-agent --bin ota-agent)
  cp "$CARGO_TARGET_DIR/release/ota-agent" "$out"
}

for p in $pairs; do
  case $p in
    1|3) rootfs base "" ;;&
    1) rootfs small "$small_extra"
       s=$(size_for "$work/base.root" "$work/small.root")
       image "$work/base.root" "$work/p1-old.img" "$s"
       image "$work/small.root" "$work/p1-new.img" "$s" ;;
    2) agent_binary "$(git rev-parse --short "$agent_old")" "$work/p2-old.bin"
       agent_binary "$(git rev-parse --short "$agent_new")" "$work/p2-new.bin"
       if [ -d "$work/agent-src" ]; then git worktree remove --force "$work/agent-src"; fi ;;
    3) rootfs large "$large_extra"
       s=$(size_for "$work/base.root" "$work/large.root")
       image "$work/base.root" "$work/p3-old.img" "$s"
       image "$work/large.root" "$work/p3-new.img" "$s" ;;
  esac
done
[ "${BUILD_ONLY:-}" = 1 ] && { log "BUILD_ONLY: pairs built"; exit 0; }

# --- measurements ------------------------------------------------------------------------------
runs=${RUNS:-3}
log "building agent/examples/bench_delta (release)"
cargo build --release -q -p ota-agent --example bench_delta
bench=$CARGO_TARGET_DIR/release/examples/bench_delta

# measure N NAME OLD NEW: writes $work/pN/result.json.
measure() {
  local n=$1 name=$2 old=$3 new=$4 d=$work/p$1
  mkdir -p "$d"
  local old_size new_size
  old_size=$(stat -c %s "$old"); new_size=$(stat -c %s "$new")
  log "pair $n ($name): old $old_size B, new $new_size B"

  local ours=()
  for ps in $params; do
    IFS=: read -r min avg max <<<"$ps"
    log "pair $n: our delta, FastCDC $min/$avg/$max, best of $runs"
    "$bench" --old "$old" --new "$new" --min "$min" --avg "$avg" --max "$max" --runs "$runs" \
      --dir "$d/run" >"$d/ours-$avg.json"
    rm -rf "$d/run"
    ours+=("$d/ours-$avg.json")
  done

  # casync: chunk files (compressed, as casync stores them) of the new image's store that the
  # old image's store lacks, plus the new blob index (.caibx) a device fetches first.
  if [ ! -f "$d/casync.bytes" ]; then
    log "pair $n: casync make (old store, new store)"
    rm -rf "$d/old.castr" "$d/new.castr"
    casync make --store="$d/old.castr" "$d/old.caibx" "$old" >/dev/null
    casync make --store="$d/new.castr" "$d/new.caibx" "$new" >/dev/null
    local chunks=0 bytes=0 p s
    while read -r p s; do
      if [ ! -f "$d/old.castr/$p" ]; then chunks=$((chunks + 1)); bytes=$((bytes + s)); fi
    done < <(cd "$d/new.castr" && find . -type f -name '*.cacnk' -printf '%P %s\n')
    echo "$((bytes + $(stat -c %s "$d/new.caibx"))) $chunks $(stat -c %s "$d/new.caibx")" >"$d/casync.bytes"
    rm -rf "$d/old.castr" "$d/new.castr"
  fi
  local casync_bytes casync_chunks casync_index
  read -r casync_bytes casync_chunks casync_index <"$d/casync.bytes"

  if [ ! -f "$d/zstd.patch" ]; then
    log "pair $n: zstd -19 --long=31 --patch-from=old"
    zstd -q -f -T2 -19 --long=31 --patch-from="$old" "$new" -o "$d/zstd.patch.tmp" 2>"$d/zstd.log"
    mv "$d/zstd.patch.tmp" "$d/zstd.patch"
  fi
  local zstd_bytes bsdiff_bytes=null bsdiff_note=""
  zstd_bytes=$(stat -c %s "$d/zstd.patch")

  local cap=$((bsdiff_max_mib * 1024 * 1024))
  if [ "$old_size" -le "$cap" ] && [ "$new_size" -le "$cap" ]; then
    if [ ! -f "$d/bsdiff.patch" ]; then
      log "pair $n: bsdiff"
      bsdiff "$old" "$new" "$d/bsdiff.patch.tmp"
      mv "$d/bsdiff.patch.tmp" "$d/bsdiff.patch"
    fi
    bsdiff_bytes=$(stat -c %s "$d/bsdiff.patch")
  else
    bsdiff_note="skipped: over ${bsdiff_max_mib} MiB (bsdiff needs ~17x the old file in memory)"
    log "pair $n: bsdiff $bsdiff_note"
  fi

  jq -n --arg name "$name" --argjson n "$n" --argjson old_size "$old_size" \
    --argjson new_size "$new_size" --argjson casync "$casync_bytes" \
    --argjson casync_chunks "$casync_chunks" --argjson casync_index "$casync_index" \
    --argjson zstd "$zstd_bytes" --argjson bsdiff "$bsdiff_bytes" --arg bsdiff_note "$bsdiff_note" \
    --slurpfile ours <(cat "${ours[@]}") \
    '{n: $n, name: $name, old_size: $old_size, new_size: $new_size, casync: $casync,
      casync_chunks: $casync_chunks, casync_index: $casync_index, zstd: $zstd, bsdiff: $bsdiff,
      bsdiff_note: $bsdiff_note, ours: $ours}' >"$d/result.json"
}

results=()
for p in $pairs; do
  case $p in
    1) measure 1 "rootfs, a few packages added" "$work/p1-old.img" "$work/p1-new.img" ;;
    2) measure 2 "ota-agent, small code change" "$work/p2-old.bin" "$work/p2-new.bin" ;;
    3) measure 3 "rootfs, many packages added" "$work/p3-old.img" "$work/p3-new.img" ;;
  esac
  results+=("$work/p$p/result.json")
done

echo
echo "command: OTA_BENCH_DELTA_DIR=$work PARAMS=\"$params\" RUNS=$runs bash scripts/bench-delta.sh"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)," \
  "$(uname -sr); pairs 1 and 3 from $mirror ($suite), pair 2 ota-agent $agent_old -> $agent_new"
python3 - "$default_params" "${results[@]}" <<'PY'
import json, sys

default = [int(x) for x in sys.argv[1].split(":")]
pairs = [json.load(open(p)) for p in sys.argv[2:]]


def size(b):
    if b is None:
        return "-"
    return f"{b / 1048576:.2f} MiB" if b >= 1048576 else f"{b / 1024:.1f} KiB"


def ours_at(pair, params):
    for o in pair["ours"]:
        if [o["params"][k] for k in ("min", "avg", "max")] == params:
            return o
    return pair["ours"][0]


def best_static(pair):
    return min(b for b in (pair["zstd"], pair["bsdiff"]) if b is not None)


def row(cells):
    print("| " + " | ".join(str(c) for c in cells) + " |")


d = default
print(f"\nBytes a device fetches (ours: FastCDC {d[0] // 1024}/{d[1] // 1024}/{d[2] // 1024} KiB, index included)\n")
row(["pair", "full", "ours", "(index)", "casync", "zstd --patch-from", "bsdiff", "ours / best static", "ours <= full + index"])
row(["---"] * 9)
for p in pairs:
    o = ours_at(p, default)
    got, best = o["delta"]["received"], best_static(p)
    row([f"{p['n']} {p['name']}", size(p["new_size"]), size(got), size(o["index_bytes"]), size(p["casync"]),
         size(p["zstd"]), size(p["bsdiff"]) if p["bsdiff"] is not None else "skipped",
         f"{got / best:.2f}x", "yes" if got <= p["new_size"] + o["index_bytes"] else "NO"])

print(f"\nTime and memory over loopback (best of {pairs[0]['ours'][0]['runs']} runs; delta time includes cutting the cached old file)\n")
row(["pair", "full download", "delta download", "delta / full", "Range requests", "peak RSS full", "peak RSS delta"])
row(["---"] * 7)
for p in pairs:
    o = ours_at(p, default)
    f, dl = o["full"], o["delta"]
    row([f"{p['n']}", f"{f['secs']:.2f} s", f"{dl['secs']:.2f} s", f"{dl['secs'] / f['secs']:.2f}x",
         dl["delta"]["requests"], f"{f['vmhwm_kib'] / 1024:.1f} MiB", f"{dl['vmhwm_kib'] / 1024:.1f} MiB"])

print("\nChunk size sweep (min = avg/4, max = avg*4)\n")
row(["pair", "min/avg/max KiB", "chunks", "index", "delta bytes (index incl.)", "copied", "requests", "delta time", "peak RSS delta", "ours / best static"])
row(["---"] * 10)
for p in pairs:
    for o in p["ours"]:
        q = o["params"]
        dl = o["delta"]
        row([p["n"], f"{q['min'] // 1024}/{q['avg'] // 1024}/{q['max'] // 1024}", o["chunks"], size(o["index_bytes"]),
             size(dl["received"]), size(dl["delta"]["copied_bytes"]), dl["delta"]["requests"], f"{dl['secs']:.2f} s",
             f"{dl['vmhwm_kib'] / 1024:.1f} MiB", f"{dl['received'] / best_static(p):.2f}x"])

print("\nGoals")
for p in pairs:
    o = ours_at(p, default)
    got, best = o["delta"]["received"], best_static(p)
    t = o["delta"]["secs"] / o["full"]["secs"]
    goals = []
    if p["n"] in (1, 2):
        goals.append(f"bytes <= 1.2x best static: {got / best:.2f}x {'met' if got <= 1.2 * best else 'NOT met'}")
    goals.append(f"time <= 1.5x full: {t:.2f}x {'met' if t <= 1.5 else 'NOT met'}")
    goals.append(f"bytes <= full + index: {'met' if got <= p['new_size'] + o['index_bytes'] else 'NOT met'}")
    if p["bsdiff"] is None:
        goals.append(f"bsdiff {p['bsdiff_note']}")
    print(f"- pair {p['n']}: " + "; ".join(goals))
PY
