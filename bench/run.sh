#!/usr/bin/env bash
# Runs a benchmark (release build) against local PostgreSQL and Redis:
#   bench/run.sh          the pipeline: backlog throughput, journal cost, latency
#   bench/run.sh warm     bulk warming of 1,000,000 rows
#   bench/run.sh hotpath  lag vs raw pg_recvlogical, journal WAL/commits vs the application's,
#                         pattern lag vs one SCAN pass (see bench/hotpath.rs for its settings)
#   bench/run.sh kafka    the Kafka source's backlog rate vs a raw librdkafka consumer, and its
#                         idle latency (see bench/kafka.rs)
# Pipeline: CW_BENCH_CHANGES (200000), CW_BENCH_TX_SIZE (100), CW_BENCH_PROBES (500),
# CW_BENCH_LOAD_ROWS_PER_SEC (20000). Warm: CW_WARM_ROWS (1000000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh
if [ "${1:-}" = kafka ]; then
  CACHEWARDEN_TANSU="$(scripts/ensure-tansu.sh)"
  export CACHEWARDEN_TANSU
fi
cargo bench --bench "${1:-pipeline}"
