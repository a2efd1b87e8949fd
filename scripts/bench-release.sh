#!/usr/bin/env bash
# Benchmark: sign and verify a large artifact with `ota`, against `openssl dgst -sha256` on the
# same file in the same run. Prints wall times (best of N), the verify/openssl ratio and the peak
# RSS of `ota release sign` and `ota release verify`.
# Usage: bash scripts/bench-release.sh [SIZE_MIB=1024] [RUNS=3]
# Goal (issue 2): verify <= 1.05x openssl, peak RSS <= 8 MB, independent of the artifact size.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
runs=${2:-3}
cargo build --release --bin ota >/dev/null 2>&1
ota=${CARGO_TARGET_DIR:-$PWD/target}/release/ota
work=$(mktemp -d "${TMPDIR:-/tmp}/ota-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

echo "artifact: ${size_mib} MiB (pseudo-random), runs: ${runs}"
head -c $((size_mib * 1024 * 1024)) /dev/urandom > artifact.bin
"$ota" key gen --out bench >/dev/null

# best wall seconds of N runs of a command, and the peak RSS (KiB) of the last run
measure() {
  local best="" rss=0 t
  for _ in $(seq 1 "$runs"); do
    cat artifact.bin > /dev/null
    /usr/bin/time -f '%e %M' -o time.out "$@" >/dev/null 2>&1
    read -r t rss < time.out
    if [ -z "$best" ] || awk "BEGIN{exit !($t < $best)}"; then best=$t; fi
  done
  echo "$best $rss"
}

read -r t_ssl rss_ssl < <(measure openssl dgst -sha256 artifact.bin)
read -r t_sign rss_sign < <(measure "$ota" release sign --key bench.key --artifact artifact.bin \
  --version 1.0.0 --security-version 1 --hw bench --out bench.release)
read -r t_verify rss_verify < <(measure "$ota" release verify --trust bench.pub \
  --release bench.release --artifact artifact.bin --hw bench)

printf '%-28s %8s s  peak RSS %6s KiB\n' "openssl dgst -sha256" "$t_ssl" "$rss_ssl"
printf '%-28s %8s s  peak RSS %6s KiB\n' "ota release sign" "$t_sign" "$rss_sign"
printf '%-28s %8s s  peak RSS %6s KiB\n' "ota release verify" "$t_verify" "$rss_verify"
awk -v v="$t_verify" -v s="$t_sign" -v o="$t_ssl" 'BEGIN {
  printf "ratio verify/openssl: %.3f (goal <= 1.05)\n", v / o;
  printf "ratio sign/openssl:   %.3f\n", s / o;
  printf "throughput verify:    %.0f MiB/s\n", '"$size_mib"' / v }'
awk -v r="$rss_verify" 'BEGIN { printf "peak RSS verify: %.1f MB (goal <= 8 MB)\n", r / 1024 }'
