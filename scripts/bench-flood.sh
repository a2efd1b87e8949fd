#!/usr/bin/env bash
# Benchmark (issue 19.4): one device floods its own heartbeat topic as fast as it can while
# DEVICES well-behaved devices (one MQTT connection each) send a heartbeat every 500 ms; prints
# the well-behaved devices' heartbeat-ack latency distribution and acks lost, what the flood
# sent, the server's drop counters, and the server's RSS (sampled every 0.5 s, and VmHWM).
# Runs twice on one server: without the flood (baseline), then with it.
# Usage: bash scripts/bench-flood.sh [DEVICES=50] [SECONDS=20]
# OTA_BENCH_MQTT_PORT=N: devices and the flood go through an external broker on 127.0.0.1:N
# (e.g. Mosquitto) instead of the embedded one: the server's own per-device budget then drops
# the flood.
set -euo pipefail
cd "$(dirname "$0")/.."
devices=${1:-50}
seconds=${2:-20}
cargo build --release --bin ota >/dev/null 2>&1
cargo build --release -p ota-server --example flood_bench >/dev/null 2>&1
target=${CARGO_TARGET_DIR:-$PWD/target}/release
ota=$target/ota
bench=$target/examples/flood_bench
work=$(mktemp -d "${TMPDIR:-/tmp}/ota-bench-flood.XXXXXX")
server_pid=""
sampler_pid=""
cleanup() {
  if [ -n "$sampler_pid" ]; then kill "$sampler_pid" 2>/dev/null || true; fi
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_port=$(free_port)
mqtt_port=${OTA_BENCH_MQTT_PORT:-$(free_port)}
"$ota" key gen --out fleet >/dev/null
cat > server.toml <<TOML
data_dir = "./data"
[http]
listen = "127.0.0.1:$http_port"
[mqtt]
$(if [ -n "${OTA_BENCH_MQTT_PORT:-}" ]; then echo "url = \"mqtt://127.0.0.1:$OTA_BENCH_MQTT_PORT\""; else echo "listen = \"127.0.0.1:$mqtt_port\""; fi)
[trust]
keys = ["fleet.pub"]
TOML
env OTA_LOG=warn "$ota" server --config server.toml 2> server.log &
server_pid=$!
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$http_port/healthz" >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { cat server.log; exit 1; }
  sleep 0.1
done
metric() { curl -sf "http://127.0.0.1:$http_port/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
rss_mb() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$server_pid/status"; }

run() {
  local label=$1; shift
  echo "== $label: $devices devices, heartbeat every 500 ms, ${seconds} s"
  : > rss.samples
  ( while true; do rss_mb >> rss.samples; sleep 0.5; done ) &
  sampler_pid=$!
  "$bench" --mqtt "127.0.0.1:$mqtt_port" --devices "$devices" --seconds "$seconds" "$@"
  kill "$sampler_pid"; wait "$sampler_pid" 2>/dev/null || true; sampler_pid=""
  printf 'server RSS during the run: max %s MB (now %s MB)\n' "$(sort -n rss.samples | tail -1)" "$(rss_mb)"
  printf 'server: %s received, %s dropped over budget, %s flood disconnects\n' \
    "$(metric ota_mqtt_messages_received_total)" "$(metric ota_mqtt_messages_dropped_total)" \
    "$(metric ota_mqtt_flood_disconnects_total)"
}
run "baseline"
run "one device flooding" --flood
printf 'server peak RSS over both runs (VmHWM, broker included): %d MB\n' \
  "$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$server_pid/status")"
