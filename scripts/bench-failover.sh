#!/usr/bin/env bash
# Failover figures (issue 15): runs the e2e test `ha_processes` RUNS times (each test run plays
# two seeds) and prints, per fault kind, min / median / max over the runs of:
#   - takeover: from the fault until a replica leads again with its coordinator running (the
#     rollout can progress again); for a killed broker node: until the leader's /healthz says
#     its MQTT link is up again (on another node);
#   - API gap: the longest time between two answers of GET /api/v1/rollouts/ID from a replica
#     that should keep answering (a standby; during a PostgreSQL restart every replica's API
#     reads the database, so this gap is the outage itself).
# Set-ups (the second argument):
#   - mosquitto (default): two real `ota server` processes with a 3 s lease on a private
#     PostgreSQL cluster, Mosquitto, 20 real agents, one rollout in four waves; faults at
#     seeded random points: the leader killed with SIGKILL, cut from the database, frozen with
#     SIGSTOP, PostgreSQL crashed and restarted 5 s later;
#   - nats: three replicas on a private 3-node NATS cluster (MQTT + JetStream), five waves, the
#     same faults plus a broker node killed (the leader's).
# Simplified: debug builds (the test binary and `ota`), agents, servers and brokers on one
# machine; the figures are dominated by the lease (3 s), the fault's own length and, on NATS,
# the cluster's recovery from a node loss, not by CPU.
# Usage: bash scripts/bench-failover.sh [RUNS=3] [mosquitto|nats]
# Needs: Mosquitto and PostgreSQL's binaries (OTA_TEST_MQTT_URL, default
# mqtt://127.0.0.1:1883; OTA_TEST_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/test;
# OTA_TEST_PG_BIN, default the newest /usr/lib/postgresql/*/bin); nats-server for `nats`
# (OTA_TEST_NATS_SERVER, default the one on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
case ${2:-mosquitto} in
  mosquitto) test=issue15_replica_processes ;;
  nats) test=issue15_three_replicas
    export OTA_TEST_NATS_SERVER=${OTA_TEST_NATS_SERVER:-$(command -v nats-server)} ;;
  *) echo "usage: $0 [RUNS] [mosquitto|nats]" >&2; exit 2 ;;
esac
export OTA_TEST_MQTT_URL=${OTA_TEST_MQTT_URL:-mqtt://127.0.0.1:1883}
export OTA_TEST_DATABASE_URL=${OTA_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
export OTA_TEST_PG_BIN=${OTA_TEST_PG_BIN:-$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")}
export OTA_TEST_OTA_BIN=${CARGO_TARGET_DIR:-$PWD/target}/debug/ota
cargo build --quiet --workspace --bin ota
cargo test --quiet --workspace --test e2e --no-run 2>/dev/null
out=$(mktemp "${TMPDIR:-/tmp}/ota-bench-failover.XXXXXX")
log=$(mktemp "${TMPDIR:-/tmp}/ota-bench-failover-log.XXXXXX")
trap 'rm -f "$out" "$log"' EXIT
for i in $(seq 1 "$runs"); do
  echo "run $i of $runs" >&2
  if ! cargo test --quiet --workspace --test e2e "$test" -- --include-ignored \
    --nocapture > "$log" 2>&1; then
    tail -40 "$log" >&2
    echo "run $i failed" >&2
    exit 1
  fi
  grep '^issue 15 (processes)' "$log" | tee -a "$out" >&2
done
python3 - "$out" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    kill = re.search(r"leader killed .* leads (\d+) ms later; .* longest gap (\d+) ms", line)
    other = re.search(r"\): (\w+) \d+ ms into wave .* leads (\d+) ms after the fault began .* longest gap (\d+) ms", line)
    node = re.search(r"\): (KillBrokerNode) .* up again (\d+) ms after the kill .* longest gap (\d+) ms", line)
    if kill:
        rows.setdefault("KillLeader (SIGKILL)", []).append((int(kill[1]), int(kill[2])))
    elif other or node:
        m = other or node
        rows.setdefault(m[1], []).append((int(m[2]), int(m[3])))
def spread(xs):
    return f"{min(xs):>6} / {int(statistics.median(xs)):>6} / {max(xs):>6}"
print(f"{'fault':<24} {'n':>3}  {'takeover ms (min/median/max)':<28}  API gap ms (min/median/max)")
for fault, values in sorted(rows.items()):
    print(f"{fault:<24} {len(values):>3}  {spread([v[0] for v in values]):<28}  {spread([v[1] for v in values])}")
PY
