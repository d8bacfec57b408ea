#!/usr/bin/env bash
# Runs the end-to-end benchmark (release build) against local PostgreSQL and Redis.
# CW_BENCH_CHANGES (default 200000), CW_BENCH_TX_SIZE (100), CW_BENCH_PROBES (500).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh
cargo bench --bench pipeline
