#!/usr/bin/env bash
# Failover figures (issue 15): runs the e2e test `ha_processes` (two real `ota server`
# processes with a 3 s lease on a private PostgreSQL cluster, Mosquitto, 20 real agents, one
# rollout in four waves; faults at seeded random points: the leader killed with SIGKILL, cut
# from the database, frozen with SIGSTOP, and PostgreSQL crashed and restarted 5 s later)
# RUNS times (each test run plays two seeds) and prints, per fault kind:
#   - takeover: from the fault until a replica leads again with its coordinator running (the
#     rollout can progress again);
#   - API gap: the longest time between two answers of GET /api/v1/rollouts/ID from the
#     replica that should keep answering (the survivor; on a PostgreSQL restart, the leader:
#     the API reads the database, so this gap is the outage itself);
# as min / median / max over the runs.
# Simplified: debug builds (the test binary and `ota`), agents and servers on one machine; the
# figures are dominated by the lease (3 s) and the fault's own length, not by CPU.
# Usage: bash scripts/bench-failover.sh [RUNS=3]
# Needs: Mosquitto and PostgreSQL's binaries (OTA_TEST_MQTT_URL, default
# mqtt://127.0.0.1:1883; OTA_TEST_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/test;
# OTA_TEST_PG_BIN, default the newest /usr/lib/postgresql/*/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
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
  if ! cargo test --quiet --workspace --test e2e issue15_replica_processes -- --include-ignored \
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
    kill = re.search(r"leader killed .* leads (\d+) ms later; its API's longest gap (\d+) ms", line)
    other = re.search(r"\): (\w+) \d+ ms into wave .* leads (\d+) ms after the fault began .* longest gap (\d+) ms", line)
    if kill:
        rows.setdefault("KillLeader (SIGKILL)", []).append((int(kill[1]), int(kill[2])))
    elif other:
        rows.setdefault(other[1], []).append((int(other[2]), int(other[3])))
def spread(xs):
    return f"{min(xs):>6} / {int(statistics.median(xs)):>6} / {max(xs):>6}"
print(f"{'fault':<24} {'n':>3}  {'takeover ms (min/median/max)':<28}  API gap ms (min/median/max)")
for fault, values in sorted(rows.items()):
    print(f"{fault:<24} {len(values):>3}  {spread([v[0] for v in values]):<28}  {spread([v[1] for v in values])}")
PY
