#!/usr/bin/env bash
# Benchmark: a fleet simulator (server/examples/fleet_sim.rs) drives simulated devices through
# an `ota server` (release build, SQLite, local files) and runs a 4-wave rollout (1%,5%,25%,100%)
# with zero bake to completion. Two simulator modes (docs/server.md, "Scale: the benchmark"):
#   multiplexed  many devices share one MQTT connection (CONNECTIONS of them); by default each
#                connection subscribes once with a wildcard (--per-device-subscriptions: each
#                device subscribes to its own topics);
#   real-agents  every device has its own MQTT connection, client id, session, last will and
#                subscriptions, as ota-agent does; spread over several simulator processes.
#
# Usage:
#   bash scripts/bench-fleet.sh [DEVICES=10000] [CONNECTIONS=4] [-- extra fleet_sim flags]
#       one run, multiplexed unless the extra flags say --real-agents (e.g. -- --flag-kill,
#       -- --per-device-subscriptions, -- --real-agents)
#   bash scripts/bench-fleet.sh replicas
#       the HA table (issue 15): real agents on a private Mosquitto and PostgreSQL
#       (OTA_BENCH_DATABASE_URL, required) at OTA_BENCH_SIZES (default 2000 5000), each size
#       with one server and with two replicas (`[ha]`: the simulator talks to the leader, a
#       standby runs beside it); prints the rows and the rollout-time ratio 2 replicas / 1.
#   bash scripts/bench-fleet.sh table
#       the scale table (issue 14): real-agent mode at OTA_BENCH_SIZES (default 2000 5000 10000)
#       and multiplexed mode at OTA_BENCH_MULTIPLEXED_SIZES (default 10000 100000), each with the
#       embedded broker and with a private Mosquitto (an empty list skips a mode); prints one
#       row per run and the growth ratios between sizes.
# Environment:
#   OTA_BENCH_BROKER=embedded|mosquitto   one run: the broker (default embedded). mosquitto
#                                         starts a private one on a free port for the run
#                                         (max_queued_messages 0, max_connections -1).
#   OTA_BENCH_BROKERS="embedded mosquitto" table: the brokers.
#   OTA_BENCH_MQTT_PORT=N                 one run: use an existing broker on 127.0.0.1:N.
#   OTA_BENCH_PROCESSES=N                 real-agents: simulator processes (default: one per
#                                         2500 devices, at least 2).
#   OTA_BENCH_TIMEOUT=S                   a run that has not finished after S seconds (default
#                                         300) is stopped and reported as "did not finish in S s".
#   OTA_BENCH_DEVICE_AUTH=1               the server requires device passwords
#                                         (mqtt.device_secret_file); the real agents log in with
#                                         them (embedded broker only).
#   OTA_BENCH_ENV, OTA_BENCH_DB_CONNECTIONS  the server's environment and database pool size.
#   OTA_BENCH_DATABASE_URL=postgres://...  PostgreSQL instead of SQLite: each run creates a
#                                         database of its own on that server (psql) and drops
#                                         it afterwards.
#   OTA_BENCH_REPLICAS=1|2                one run: 2 starts a second replica (`[ha]`, needs
#                                         OTA_BENCH_DATABASE_URL and a broker other than the
#                                         embedded one); the simulator talks to the leader.
# Each figure comes with the load average at the end of its run (`/proc/loadavg`): on a shared
# machine the figures move with it.
set -euo pipefail
cd "$(dirname "$0")/.."
table=false
replicas_table=false
if [ "${1:-}" = table ]; then
  table=true
  shift
elif [ "${1:-}" = replicas ]; then
  replicas_table=true
  shift
fi
devices=${1:-10000}
connections=${2:-4}
shift $(( $# > 2 ? 2 : $# ))
[ "${1:-}" = "--" ] && shift
extra=("$@")
timeout_s=${OTA_BENCH_TIMEOUT:-300}

# One invocation: the same feature set every time, so a second run rebuilds nothing.
cargo build --quiet --release -p ota-cli -p ota-server --bin ota --example fleet_sim
target=${CARGO_TARGET_DIR:-$PWD/target}/release
ota=$target/ota
sim=$target/examples/fleet_sim
work=$(mktemp -d "${TMPDIR:-/tmp}/ota-bench-fleet.XXXXXX")
# Processes of the current run (server, Mosquitto, simulator shards, fd sampler).
run_pids=()
stop_run() {
  local pid
  for pid in ${run_pids[@]+"${run_pids[@]}"}; do kill "$pid" 2>/dev/null || true; done
  for pid in ${run_pids[@]+"${run_pids[@]}"}; do wait "$pid" 2>/dev/null || true; done
  run_pids=()
}
cleanup() {
  stop_run
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

# Every device connection costs file descriptors (in the server with the embedded broker, in
# Mosquitto otherwise, and in the simulator): raise the soft limit to the hard one.
ulimit -n "$(ulimit -Hn)"
echo "open-file limit (ulimit -n) for the server, Mosquitto and the simulators: $(ulimit -n)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
token=bench-operator-token-0123456789

"$ota" key gen --out fleet >/dev/null
head -c 100000 /dev/urandom > old.bin
head -c 200000 /dev/urandom > new.bin
"$ota" release sign --key fleet.key --artifact old.bin --version 1.0.0 --security-version 1 \
  --hw gw-a --out old.release >/dev/null
"$ota" release sign --key fleet.key --artifact new.bin --version 2.0.0 --security-version 1 \
  --hw gw-a --out new.release >/dev/null
new_digest=$("$ota" release show new.release --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifest"]["artifact_sha256"])')

# A private Mosquitto on a free port (as .ci/run's ensure_mosquitto): sets mosquitto_port.
start_mosquitto() {
  local dir=$1
  mosquitto_port=$(free_port)
  cat > "$dir/mosquitto.conf" <<CONF
listener $mosquitto_port 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
max_inflight_messages 0
max_connections -1
CONF
  mosquitto -c "$dir/mosquitto.conf" >"$dir/mosquitto.log" 2>&1 &
  run_pids+=($!)
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$mosquitto_port") 2>/dev/null && return; sleep 0.1; done
  cat "$dir/mosquitto.log"
  echo "mosquitto did not start" >&2
  exit 1
}

fds_of() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

# run_one MODE BROKER DEVICES [fleet_sim flags...]: one server, one fleet, one rollout. Prints
# the simulator's output and ends with a line `result mode=... key=value ...`.
run_one() {
  local mode=$1 broker=$2 n=$3
  shift 3
  local dir mqtt_port server_pid mqtt_conf processes=1 rc=0 i
  dir=$(mktemp -d "$work/run.XXXXXX")
  local http_port
  http_port=$(free_port)
  if [ "$broker" = mosquitto ]; then
    start_mosquitto "$dir"
    mqtt_port=$mosquitto_port
    mqtt_conf="url = \"mqtt://127.0.0.1:$mqtt_port\""
  elif [ "$broker" = external ]; then
    mqtt_port=$OTA_BENCH_MQTT_PORT
    mqtt_conf="url = \"mqtt://127.0.0.1:$mqtt_port\""
  else
    mqtt_port=$(free_port)
    mqtt_conf="listen = \"127.0.0.1:$mqtt_port\""
    if [ -n "${OTA_BENCH_DEVICE_AUTH:-}" ]; then
      mqtt_conf+=$'\n'"device_secret_file = \"$dir/device.secret\""
    fi
  fi
  local replicas=${OTA_BENCH_REPLICAS:-1} database="" db_name="" db=sqlite
  if [ -n "${OTA_BENCH_DATABASE_URL:-}" ]; then
    db=postgres
    db_name=ota_bench_$RANDOM$RANDOM
    psql -q "$OTA_BENCH_DATABASE_URL" -c "CREATE DATABASE $db_name"
    database="url = \"${OTA_BENCH_DATABASE_URL%/*}/$db_name\""
  fi
  if [ -n "${OTA_BENCH_DB_CONNECTIONS:-}" ]; then
    database+=$'\n'"max_connections = $OTA_BENCH_DB_CONNECTIONS"
  fi
  if [ "$replicas" = 2 ] && { [ "$db" = sqlite ] || [ "$broker" = embedded ]; }; then
    echo "OTA_BENCH_REPLICAS=2 needs OTA_BENCH_DATABASE_URL and Mosquitto or an external broker" >&2
    exit 2
  fi
  # server_config NAME HTTP_PORT: the replica's configuration file ([ha] with two replicas).
  server_config() {
    cat > "$dir/$1.toml" <<TOML
data_dir = "$dir/data"
[http]
listen = "127.0.0.1:$2"
[mqtt]
$mqtt_conf
[database]
$database
[trust]
keys = ["$work/fleet.pub"]
[[operators]]
name = "bench"
token = "$token"
$(if [ "$replicas" = 2 ]; then printf '[ha]\nreplica_id = "%s"\n' "$1"; fi)
TOML
  }
  # start_server NAME HTTP_PORT ROLE: starts it and waits until /healthz says ROLE (any role
  # when ROLE is empty); sets started_pid.
  start_server() {
    server_config "$1" "$2"
    # shellcheck disable=SC2086 # OTA_BENCH_ENV is a list of VAR=value words
    env OTA_LOG=warn ${OTA_BENCH_ENV:-} "$ota" server --config "$dir/$1.toml" 2> "$dir/$1.log" &
    started_pid=$!
    run_pids+=("$started_pid")
    for _ in $(seq 1 300); do
      curl -sf "http://127.0.0.1:$2/healthz" 2>/dev/null | grep -q "\"role\":\"$3" && return
      kill -0 "$started_pid" 2>/dev/null || { cat "$dir/$1.log"; exit 1; }
      sleep 0.1
    done
    echo "$1 did not become ${3:-ready}" >&2
    exit 1
  }
  local started_pid
  start_server server "$http_port" "$([ "$replicas" = 2 ] && echo leader)"
  server_pid=$started_pid
  if [ "$replicas" = 2 ]; then
    start_server standby "$(free_port)" standby
  fi
  local server=http://127.0.0.1:$http_port
  OTA_SERVER=$server OTA_TOKEN=$token "$ota" release publish old.release --artifact old.bin >/dev/null
  OTA_SERVER=$server OTA_TOKEN=$token "$ota" release publish new.release --artifact new.bin >/dev/null
  local rss_idle fds_idle
  rss_idle=$(status_kb "$server_pid" VmRSS)
  fds_idle=$(fds_of "$server_pid")
  # The server's peak open file descriptors, sampled every 0.5 s.
  ( max=0; while kill -0 "$server_pid" 2>/dev/null; do
      f=$(fds_of "$server_pid"); [ "$f" -gt "$max" ] && { max=$f; echo "$max" > "$dir/fds.max"; }
      sleep 0.5
    done ) &
  run_pids+=($!)

  local flags=(--http "$server" --token "$token" --mqtt "127.0.0.1:$mqtt_port" --old old.release
    --new-digest "$new_digest" --devices "$n" --prefix bench-)
  if [ "$mode" = real-agents ]; then
    processes=${OTA_BENCH_PROCESSES:-$(( n / 2500 > 2 ? n / 2500 : 2 ))}
    flags+=(--real-agents)
    if [ -n "${OTA_BENCH_DEVICE_AUTH:-}" ] && [ "$broker" = embedded ]; then
      flags+=(--device-secret-file "$dir/device.secret")
    fi
  fi
  echo "== $mode, $broker broker, $n devices, $processes simulator process(es)"
  for i in $(seq 1 $((processes - 1))); do
    "$sim" "${flags[@]}" --shard "$i/$processes" "$@" >"$dir/shard$i.log" 2>&1 &
    run_pids+=($!)
  done
  timeout "$timeout_s" "$sim" "${flags[@]}" --shard "0/$processes" "$@" > "$dir/sim.out" \
    2> >(tee "$dir/sim.err" >&2) || rc=$?
  cat "$dir/sim.out"
  local load hwm fds_max
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  hwm=$(status_kb "$server_pid" VmHWM || echo 0)
  fds_max=$(cat "$dir/fds.max" 2>/dev/null || echo "$fds_idle")
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "the server exited; its log:"; tail -20 "$dir/server.log"
  fi
  if grep -qil "too many open files" "$dir"/*.log 2>/dev/null; then
    echo "note: 'Too many open files' in $(grep -il "too many open files" "$dir"/*.log | xargs -n1 basename | tr '\n' ' ')"
  fi
  if grep -q flag_kill_last_device_s "$dir/sim.out"; then
    # scripts/bench-flags.sh: the kill switch, not a rollout.
    printf 'flag kill: REST answer after %s s; last of %s devices applied it after %s s (goal <= 2 s)\n' \
      "$(grep flag_kill_answered_s "$dir/sim.out" | cut -d= -f2)" "$n" \
      "$(grep flag_kill_last_device_s "$dir/sim.out" | cut -d= -f2)"
    stop_run
    return 0
  fi
  local wall reg received published
  get() { grep "^$1=" "$dir/sim.out" | cut -d= -f2; }
  if [ "$rc" = 124 ]; then
    # How far it got: registered or not, and the server's peak descriptors.
    reg=$(grep -o 'registered and online in [0-9.]*' "$dir/sim.err" | awk '{print $NF}' || true)
    printf 'result mode=%s broker=%s replicas=%s db=%s devices=%s processes=%s status=timeout timeout_s=%s registered_s=%s fds_peak=%s load="%s"\n' \
      "$mode" "$broker" "$replicas" "$db" "$n" "$processes" "$timeout_s" "${reg:-none}" "$fds_max" "$load"
  elif grep -q rollout_status=completed "$dir/sim.out" && [ "$rc" = 0 ]; then
    wall=$(get rollout_wall_s); reg=$(get registration_s)
    received=$(get server_mqtt_received_total); published=$(get server_mqtt_published_total)
    printf 'result mode=%s broker=%s replicas=%s db=%s devices=%s processes=%s status=ok registration_s=%s rollout_s=%s msgs_per_s=%.0f rss_idle_mb=%d rss_peak_mb=%d rss_per_device_kb=%.1f fds_idle=%s fds_peak=%s fds_per_device=%.2f load="%s"\n' \
      "$mode" "$broker" "$replicas" "$db" "$n" "$processes" "$reg" "$wall" \
      "$(echo "($received + $published) / $wall" | bc -l)" $((rss_idle / 1024)) $((hwm / 1024)) \
      "$(echo "($hwm - $rss_idle) / $n" | bc -l)" "$fds_idle" "$fds_max" \
      "$(echo "($fds_max - $fds_idle) / $n" | bc -l)" "$load"
  else
    printf 'result mode=%s broker=%s replicas=%s db=%s devices=%s processes=%s status=failed rc=%s load="%s"\n' \
      "$mode" "$broker" "$replicas" "$db" "$n" "$processes" "$rc" "$load"
    tail -5 "$dir/server.log"
  fi
  stop_run
  if [ -n "$db_name" ]; then
    psql -q "$OTA_BENCH_DATABASE_URL" -c "DROP DATABASE $db_name WITH (FORCE)"
  fi
}

if ! $table && ! $replicas_table; then
  broker=${OTA_BENCH_BROKER:-embedded}
  [ -n "${OTA_BENCH_MQTT_PORT:-}" ] && broker=external
  mode=multiplexed
  for f in ${extra[@]+"${extra[@]}"}; do [ "$f" = --real-agents ] && mode=real-agents; done
  filtered=()
  for f in ${extra[@]+"${extra[@]}"}; do [ "$f" = --real-agents ] || filtered+=("$f"); done
  [ "$mode" = multiplexed ] && filtered+=(--connections "$connections")
  # Not a pipe: run_one runs in this shell, so the EXIT trap stops what it started.
  run_one "$mode" "$broker" "$devices" ${filtered[@]+"${filtered[@]}"} > >(tee results.txt)
  wait $! 2>/dev/null || true
  grep -q "^result .*status=ok" results.txt || grep -q "^flag kill" results.txt
  exit
fi

if $replicas_table; then
  [ -n "${OTA_BENCH_DATABASE_URL:-}" ] || { echo "bench-fleet.sh replicas needs OTA_BENCH_DATABASE_URL" >&2; exit 2; }
  for n in ${OTA_BENCH_SIZES-2000 5000}; do
    for r in 1 2; do
      OTA_BENCH_REPLICAS=$r run_one real-agents mosquitto "$n" > >(tee -a results.txt)
      wait $! 2>/dev/null || true
    done
  done
  echo
  echo "## Results ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, release build, real agents, Mosquitto, PostgreSQL)"
  python3 - results.txt <<'PY'
import shlex, sys
rows = [dict(kv.split("=", 1) for kv in shlex.split(line)[1:])
        for line in open(sys.argv[1]) if line.startswith("result ")]
print("| devices | replicas | registration | rollout (4 waves, no bake) | msg/s | leader RSS/device above idle | load avg (1/5/15 min) |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    head = f"| {int(r['devices']):,} | {r['replicas']} |"
    if r["status"] == "ok":
        print(f"{head} {float(r['registration_s']):.1f} s | {float(r['rollout_s']):.1f} s | {r['msgs_per_s']} | {r['rss_per_device_kb']} KB | {r['load']} |")
    else:
        print(f"{head} {r['status']} | | | | {r['load']} |")
print()
print("Rollout time, 2 replicas / 1 (1.0: a standby costs the leader nothing):")
by = {(r["devices"], r["replicas"]): r for r in rows}
for n in dict.fromkeys(r["devices"] for r in rows):
    one, two = by.get((n, "1")), by.get((n, "2"))
    if one and two and one["status"] == two["status"] == "ok":
        print(f"- {int(n):,} devices: {float(two['rollout_s']) / float(one['rollout_s']):.2f}")
    else:
        print(f"- {int(n):,} devices: n/a (a run did not finish)")
PY
  exit
fi

sizes=${OTA_BENCH_SIZES-2000 5000 10000}
mux_sizes=${OTA_BENCH_MULTIPLEXED_SIZES-10000 100000}
brokers=${OTA_BENCH_BROKERS:-embedded mosquitto}
# Real-agent runs first (the mode the fleet behaves like), then the multiplexed ones.
for broker in $brokers; do
  for n in $sizes; do
    run_one real-agents "$broker" "$n" > >(tee -a results.txt)
    wait $! 2>/dev/null || true
  done
done
for broker in $brokers; do
  for n in $mux_sizes; do
    run_one multiplexed "$broker" "$n" --connections 4 > >(tee -a results.txt)
    wait $! 2>/dev/null || true
  done
done

echo
echo "## Results ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, release build)"
python3 - results.txt "$timeout_s" <<'PY'
import shlex, sys
rows = []
for line in open(sys.argv[1]):
    if line.startswith("result "):
        rows.append(dict(kv.split("=", 1) for kv in shlex.split(line)[1:]))
print("| mode | broker | devices | sim processes | registration | rollout (4 waves, no bake) | msg/s | server RSS/device above idle | server fds/device | load avg (1/5/15 min) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    head = f"| {r['mode']} | {r['broker']} | {int(r['devices']):,} | {r['processes']} |"
    if r["status"] == "ok":
        print(f"{head} {float(r['registration_s']):.1f} s | {float(r['rollout_s']):.1f} s | {r['msgs_per_s']} | "
              f"{r['rss_per_device_kb']} KB | {r['fds_per_device']} | {r['load']} |")
    elif r["status"] == "timeout":
        got = "not registered" if r["registered_s"] == "none" else f"registered in {r['registered_s']} s"
        print(f"{head} did not finish in {r['timeout_s']} s ({got}) | | | | peak {r['fds_peak']} fds | {r['load']} |")
    else:
        print(f"{head} failed (exit {r['rc']}) | | | | | {r['load']} |")
print()
print("Growth ratio = (time ratio) / (size ratio) between consecutive sizes (1.0: linear):")
groups = {}
for r in rows:
    groups.setdefault((r["mode"], r["broker"]), []).append(r)
for (mode, broker), rs in groups.items():
    for a, b in zip(rs, rs[1:]):
        size = int(b["devices"]) / int(a["devices"])
        label = f"- {mode}, {broker}, {int(a['devices']):,} -> {int(b['devices']):,}:"
        if a["status"] != "ok" or b["status"] != "ok":
            print(f"{label} n/a (a run did not finish)")
            continue
        reg = float(b["registration_s"]) / float(a["registration_s"]) / size
        roll = float(b["rollout_s"]) / float(a["rollout_s"]) / size
        print(f"{label} registration {reg:.2f}, rollout {roll:.2f}")
PY
