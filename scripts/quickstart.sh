#!/usr/bin/env bash
# Signing quickstart: generate a key, sign a small image, verify it, show it. Leaves its files in
# a temporary directory it prints. Usage: bash scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin ota
ota=${CARGO_TARGET_DIR:-$PWD/target}/release/ota
work=$(mktemp -d)
cd "$work"
head -c 65536 /dev/urandom > firmware.img
"$ota" key gen --out firmware-team
"$ota" release sign --key firmware-team.key --artifact firmware.img --version 1.0.0 \
  --security-version 1 --hw gw-a --expires 30d --product gateway-fw --out firmware.release
"$ota" release verify --trust firmware-team.pub --release firmware.release --artifact firmware.img --hw gw-a
"$ota" release show firmware.release
echo "quickstart files are in $work"
