#!/usr/bin/env bash
# Runs the worker against local PostgreSQL and Redis with the example rules in rules/:
# starts the services (wal_level = logical), creates the `edurise` database with the example
# schema, builds the web console and cachewarden and runs it in the foreground (Ctrl-C stops
# it gracefully); the console is at http://127.0.0.1:9187/.
# It changes the local PostgreSQL server's settings when they do not fit (wal_level = logical
# and more, with ALTER SYSTEM and one restart; see scripts/ensure-services.sh);
# CACHEWARDEN_NO_SERVER_CHANGES=1 makes it only check them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh
scripts/ensure-build-tools.sh
export PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres
if ! psql -d postgres -Atqc "SELECT 1 FROM pg_database WHERE datname = 'edurise'" | grep -q 1; then
  createdb edurise
fi
PGOPTIONS="-c client_min_messages=warning" psql -d edurise -q -v ON_ERROR_STOP=1 -f examples/edurise/schema.sql
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
# The console (Vue, built by Vite) is embedded in the binary.
scripts/build-console.sh
cargo build --release --bin cachewarden
bin="${CARGO_TARGET_DIR:-target}/release/cachewarden"
"$bin" --config cachewarden.toml migrate
"$bin" --config cachewarden.toml check
echo "run-local: the console is at http://$(sed -n 's/^listen *= *"\(.*\)"/\1/p' cachewarden.toml | head -1 || echo 127.0.0.1:9187)/" >&2
exec "$bin" --config cachewarden.toml run
