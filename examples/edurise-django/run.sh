#!/usr/bin/env bash
# Runs the EduRise-style workload against local PostgreSQL, Redis and a cachewarden worker:
# plain cache-aside, then get_or_fill (fenced fills), on the same data, seeds and load, RUNS
# times each (default 3); prints one JSON line per run. Needs the virtualenv of
# scripts/ensure-python.sh (Django, django-redis) and builds the worker.
#   SECONDS_PER_RUN=20 RUNS=3 examples/edurise-django/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
scripts/ensure-services.sh >&2
python="${CACHEWARDEN_PYTHON:-$(scripts/ensure-python.sh)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
bin="${CACHEWARDEN_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --quiet --bin cachewarden
  bin="$CARGO_TARGET_DIR/release/cachewarden"
fi
export EDURISE_DB="${EDURISE_DB:-edurise_workload}" PGHOST=127.0.0.1 PGUSER=postgres
export PYTHONPATH="$here:$root/clients/django/src"
export DJANGO_SETTINGS_MODULE=edurise.settings
work="$(mktemp -d)"
psql -d postgres -qc "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$EDURISE_DB'" >/dev/null
psql -d postgres -qc "DROP DATABASE IF EXISTS $EDURISE_DB WITH (FORCE)" -qc "CREATE DATABASE $EDURISE_DB" >/dev/null
"$python" "$here/manage.py" migrate -v 0
port="${EDURISE_STATUS_PORT:-19187}"
cat > "$work/cachewarden.toml" <<TOML
rules_dir = "$here/rules"
[postgres]
url = "postgres://postgres@127.0.0.1:5432/$EDURISE_DB"
slot = "$EDURISE_DB"
publication = "$EDURISE_DB"
[redis]
url = "redis://127.0.0.1:6379/0"
key_prefix = "$EDURISE_DB:1:"
[status]
listen = "127.0.0.1:$port"
[monitor]
interval = "5s"
TOML
"$bin" --config "$work/cachewarden.toml" migrate >/dev/null
"$bin" --config "$work/cachewarden.toml" run 2> "$work/worker.log" &
worker=$!
# At exit: stop the worker and drop its slot (an idle slot keeps WAL on the server forever);
# the database stays, for `cachewarden advise`.
cleanup() {
  kill "$worker" 2>/dev/null; wait "$worker" 2>/dev/null || true
  psql -d postgres -qc "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$EDURISE_DB'" >/dev/null || true
}
trap cleanup EXIT
for i in $(seq 150); do
  curl -sf "127.0.0.1:$port/readyz" >/dev/null && break
  if [ "$i" = 150 ] || ! kill -0 "$worker" 2>/dev/null; then
    echo "the worker did not become ready:" >&2; tail -20 "$work/worker.log" >&2; exit 1
  fi
  sleep 0.2
done
"$python" "$here/manage.py" workload --mode plain --seconds 1 --reset --settle 0.5 >/dev/null
for run in $(seq "${RUNS:-3}"); do
  for mode in plain fenced; do
    "$python" "$here/manage.py" workload --mode "$mode" --seconds "${SECONDS_PER_RUN:-20}" --seed "$run" --reset \
      --write-skew "${WRITE_SKEW:-uniform}"
  done
done
echo "worker log: $work/worker.log" >&2
echo "advice: $bin --config $work/cachewarden.toml advise" >&2
