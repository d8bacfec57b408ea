#!/usr/bin/env bash
# Makes local PostgreSQL and Redis ready for cachewarden, idempotently:
# installs them when missing (Debian), starts them when stopped, and changes the LOCAL
# server's settings with ALTER SYSTEM when needed — wal_level = logical,
# max_replication_slots and max_wal_senders >= 32 (the parallel tests), and
# max_slot_wal_keep_size = 10GB — restarting PostgreSQL once for them.
# CACHEWARDEN_NO_SERVER_CHANGES=1 changes nothing and only checks.
set -euo pipefail

PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
export PGHOST PGPORT PGUSER
REDIS_PORT=${REDIS_PORT:-6379}

log() { printf 'ensure-services: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1 \
   || ! command -v psql >/dev/null 2>&1; then
  log "installing postgresql and redis-server"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server redis-tools >/dev/null
fi

pg_version() { ls /etc/postgresql | sort -V | tail -n 1; }
pg_ctl_main() { as_root pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main "$1"; }
wait_pg() {
  for _ in $(seq 1 60); do pg_isready -q && return 0; sleep 0.5; done
  log "PostgreSQL did not become ready"; return 1
}

if ! pg_isready -q; then
  log "starting PostgreSQL"
  pg_ctl_main start || true
  wait_pg
fi

setting() { psql -d postgres -Atqc "SHOW $1"; }
# CACHEWARDEN_NO_SERVER_CHANGES=1: change nothing on the server; only say what is missing.
if [ "${CACHEWARDEN_NO_SERVER_CHANGES:-0}" = 1 ]; then
  [ "$(setting wal_level)" = "logical" ] || {
    log "wal_level is $(setting wal_level), and cachewarden needs logical: run"
    log "  ALTER SYSTEM SET wal_level = logical;  and restart PostgreSQL"
    log "(CACHEWARDEN_NO_SERVER_CHANGES=1 is set, so this script does not change it)"
    exit 1
  }
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1 || { log "Redis does not answer on port $REDIS_PORT"; exit 1; }
  log "PostgreSQL (wal_level=logical) and Redis are ready (nothing changed)"
  exit 0
fi
restart=0
if [ "$(setting wal_level)" != "logical" ]; then
  log "setting wal_level = logical on the local server (CACHEWARDEN_NO_SERVER_CHANGES=1 to check only)"
  psql -d postgres -qc "ALTER SYSTEM SET wal_level = logical"
  restart=1
fi
# Parallel tests each hold a slot and a WAL sender.
if [ "$(setting max_replication_slots)" -lt 32 ]; then
  psql -d postgres -qc "ALTER SYSTEM SET max_replication_slots = 32"
  restart=1
fi
if [ "$(setting max_wal_senders)" -lt 32 ]; then
  psql -d postgres -qc "ALTER SYSTEM SET max_wal_senders = 32"
  restart=1
fi
# A slot that nobody reads any more must not fill the disk with retained WAL.
if [ "$(setting max_slot_wal_keep_size)" = "-1" ]; then
  psql -d postgres -qc "ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'"
  psql -d postgres -qc "SELECT pg_reload_conf()" >/dev/null
fi
if [ "$restart" = 1 ]; then
  log "restarting PostgreSQL to apply settings"
  pg_ctl_main restart
  wait_pg
fi
[ "$(setting wal_level)" = "logical" ] || { log "wal_level is still not logical"; exit 1; }

if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  log "starting Redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 40); do redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.25; done
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null
fi
log "PostgreSQL (wal_level=logical) and Redis are ready"
