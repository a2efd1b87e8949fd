#!/usr/bin/env bash
# Benchmark: a fleet simulator (server/examples/fleet_sim.rs) drives DEVICES simulated devices
# through the `ota server`'s embedded MQTT broker (the real protocol; many devices share one
# MQTT connection) and runs a 4-wave rollout (1%,5%,25%,100%) with zero bake to completion.
# By default each simulator connection subscribes once (wildcard) to every device's desired and
# heartbeat/ack topics; --per-device-subscriptions makes each device subscribe to its own topics
# like a real agent (slow on rumqttd at this scale, see docs/server.md).
# Prints the rollout's wall time, the server's peak RSS (VmHWM, broker included: it runs
# in-process) and messages per second.
# Usage: bash scripts/bench-fleet.sh [DEVICES=10000] [CONNECTIONS=4] [-- extra fleet_sim flags, e.g. --per-device-subscriptions]
# Goal (issue 4): <= 60 s end to end and <= 200 MB server RSS on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
devices=${1:-10000}
connections=${2:-4}
shift $(( $# > 2 ? 2 : $# ))
[ "${1:-}" = "--" ] && shift
extra=("$@")
cargo build --release --bin ota >/dev/null 2>&1
cargo build --release -p ota-server --example fleet_sim >/dev/null 2>&1
target=${CARGO_TARGET_DIR:-$PWD/target}/release
ota=$target/ota
sim=$target/examples/fleet_sim
work=$(mktemp -d "${TMPDIR:-/tmp}/ota-bench-fleet.XXXXXX")
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_port=$(free_port)
# OTA_BENCH_MQTT_PORT=N: use an external broker on 127.0.0.1:N instead of the embedded one
# (to tell the server's memory from the broker's).
mqtt_port=${OTA_BENCH_MQTT_PORT:-$(free_port)}
token=bench-operator-token-0123456789

"$ota" key gen --out fleet >/dev/null
head -c 100000 /dev/urandom > old.bin
head -c 200000 /dev/urandom > new.bin
"$ota" release sign --key fleet.key --artifact old.bin --version 1.0.0 --security-version 1 \
  --hw gw-a --out old.release >/dev/null
"$ota" release sign --key fleet.key --artifact new.bin --version 2.0.0 --security-version 1 \
  --hw gw-a --out new.release >/dev/null
cat > server.toml <<TOML
data_dir = "./data"
[http]
listen = "127.0.0.1:$http_port"
[mqtt]
$(if [ -n "${OTA_BENCH_MQTT_PORT:-}" ]; then echo "url = \"mqtt://127.0.0.1:$OTA_BENCH_MQTT_PORT\""; else echo "listen = \"127.0.0.1:$mqtt_port\""; fi)
$(if [ -n "${OTA_BENCH_DB_CONNECTIONS:-}" ]; then printf '[database]\nmax_connections = %s\n' "$OTA_BENCH_DB_CONNECTIONS"; fi)
[trust]
keys = ["fleet.pub"]
[[operators]]
name = "bench"
token = "$token"
TOML

env OTA_LOG=warn ${OTA_BENCH_ENV:-} "$ota" server --config server.toml 2> server.log &
server_pid=$!
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$http_port/healthz" >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { cat server.log; exit 1; }
  sleep 0.1
done
export OTA_SERVER="http://127.0.0.1:$http_port" OTA_TOKEN=$token
"$ota" release publish old.release --artifact old.bin >/dev/null
"$ota" release publish new.release --artifact new.bin >/dev/null
new_digest=$("$ota" release show new.release --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifest"]["artifact_sha256"])')
rss_idle=$(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status")

echo "devices: $devices over $connections MQTT connections; rollout 1%,5%,25%,100%, bake 0"
start=$(date +%s.%N)
"$sim" --http "$OTA_SERVER" --token "$token" --mqtt "127.0.0.1:$mqtt_port" --old old.release \
  --new-digest "$new_digest" --devices "$devices" --connections "$connections" --prefix bench- ${extra[@]+"${extra[@]}"} \
  | tee sim.out
end=$(date +%s.%N)
if grep -q flag_kill_last_device_s sim.out; then
  # scripts/bench-flags.sh: the kill switch, not a rollout.
  printf 'flag kill: REST answer after %s s; last of %s devices applied it after %s s (goal <= 2 s)\n' \
    "$(grep flag_kill_answered_s sim.out | cut -d= -f2)" "$devices" \
    "$(grep flag_kill_last_device_s sim.out | cut -d= -f2)"
  exit 0
fi
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$server_pid/status")
rss=$(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status")
wall=$(grep rollout_wall_s sim.out | cut -d= -f2)
received=$(grep server_mqtt_received_total sim.out | cut -d= -f2)
published=$(grep server_mqtt_published_total sim.out | cut -d= -f2)
echo
printf 'rollout wall time (create -> completed): %s s\n' "$wall"
printf 'end to end incl. connecting %s devices: %.1f s\n' "$devices" "$(echo "$end - $start" | bc)"
printf 'server peak RSS (VmHWM, broker included): %d MB (idle before devices: %d MB, now %d MB)\n' \
  $((hwm / 1024)) $((rss_idle / 1024)) $((rss / 1024))
printf 'server MQTT messages during the rollout: %s received + %s published = %.0f msg/s\n' \
  "$received" "$published" "$(echo "($received + $published) / $wall" | bc -l)"
grep -q rollout_status=completed sim.out
