#!/usr/bin/env bash
# Benchmark (issue 6): the feature-flag kill switch. Reuses scripts/bench-fleet.sh (an `ota
# server` with its embedded broker, DEVICES simulated online devices from
# server/examples/fleet_sim.rs) in --flag-kill mode: a flag is turned on for every device, then
# killed; prints the time from the kill request (what `ota flag kill` sends) to the last device
# applying it.
# Usage: bash scripts/bench-flags.sh [DEVICES=10000] [CONNECTIONS=4]
# Goal: <= 2 s to the last of 10,000 online devices on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash scripts/bench-fleet.sh "${1:-10000}" "${2:-4}" -- --flag-kill
