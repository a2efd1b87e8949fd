#!/usr/bin/env bash
# Benchmark of the device agent (issue 3): a real `ota-agent` process, a Mosquitto broker on a
# free port, and agent/examples/bench_fleet.rs as fleet server + loopback HTTP artifact server.
# Prints:
#   - peak RSS (VmHWM) of ota-agent idle (connected, nothing to do) and after updating to a
#     1 GiB artifact (goal <= 8 MB idle, <= 12 MB updating), with the `files` installer;
#   - the same with the `ab` installer (issue 17), in a second run: slots are two image files of
#     the artifact's size, the bootloader is GRUB on an env file (`grub-editenv`; without it the
#     `custom` backend running `true`) and the reboot command is `true`; the update is measured
#     from desired to the `rebooting` event (download, verify, slot written, fsynced, read back);
#   - download + verify + install of 256 MiB over loopback HTTP (desired published -> `trial`
#     event) vs `curl -s URL | openssl dgst -sha256` of the same file in the same run
#     (goal <= 1.25x);
#   - identical redeploy: bytes downloaded (must be 0) and the latency from publishing the
#     desired state to receiving the `skipped-identical` event;
#   - the size of the stripped binary.
# Usage: [OTA_AGENT_PROFILE=gateway] bash scripts/bench-agent.sh [BIG_MIB=1024] [MEDIUM_MIB=256]
# OTA_AGENT_PROFILE picks the cargo profile of the measured ota-agent: `release` (default) or
# `gateway` (the size-optimised profile gateways ship, issue 17).
# Needs: mosquitto, curl, openssl, python3 (to pick a free port); about 5 GB in $TMPDIR (one run
# at a time: the `files` run's files are removed before the `ab` run).
set -euo pipefail
cd "$(dirname "$0")/.."
big=${1:-1024}
medium=${2:-256}
profile=${OTA_AGENT_PROFILE:-release}
cargo build --profile "$profile" -p ota-agent --bin ota-agent >/dev/null 2>&1
cargo build --release -p ota-agent --example bench_fleet >/dev/null 2>&1
target=${CARGO_TARGET_DIR:-$PWD/target}
agent=$target/$profile/ota-agent
driver=$target/release/examples/bench_fleet
work=$(mktemp -d "${TMPDIR:-/tmp}/ota-bench-agent.XXXXXX")
broker_pid=""
cleanup() {
  if [ -n "$broker_pid" ]; then kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
persistence false
set_tcp_nodelay true
CONF
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
broker_pid=$!
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  sleep 0.05
done

echo "ota-agent benchmark (profile $profile, $(nproc) cores, artifacts ${big} MiB and ${medium} MiB)"
echo "-- files installer"
"$driver" --agent "$agent" --broker "mqtt://127.0.0.1:$port" --dir "$work/run" \
  --big-mib "$big" --medium-mib "$medium"
rm -rf "$work/run"
grub=()
if editenv=$(command -v grub-editenv); then grub=(--grub-editenv "$editenv"); fi
echo "-- ab installer (bootloader: ${editenv:-custom, true})"
"$driver" --agent "$agent" --broker "mqtt://127.0.0.1:$port" --dir "$work/ab" \
  --big-mib "$big" --installer ab "${grub[@]}"
size=$(stat -c %s "$agent")
echo "stripped $profile binary: $size bytes ($(( size / 1024 )) KiB)"
