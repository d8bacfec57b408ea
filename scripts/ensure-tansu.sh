#!/usr/bin/env bash
# Makes the `tansu` Kafka-compatible broker available for the Kafka source's integration
# tests, idempotently: built once from crates.io into a cache outside the clone (about 20
# minutes on 2 cores, then instant). Prints the binary's path. Tests start their own broker,
# one per test, on a free loopback port with in-memory storage.
set -euo pipefail
version=0.6.0
root="${CACHEWARDEN_TOOLS:-/var/tmp/cachewarden-tools}"
bin="$root/bin/tansu"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$version"; then
  echo "$bin"
  exit 0
fi
echo "ensure-tansu: building tansu $version into $root (once)" >&2
mkdir -p "$root"
# `dynostore` brings the memory:// storage engine the tests use.
CARGO_TARGET_DIR="$root/target" cargo install --quiet --locked tansu --version "$version" \
  --no-default-features --features dynostore --root "$root" >&2
rm -rf "$root/target"
echo "$bin"
