#!/usr/bin/env bash
# Memory under a large backlog: commits CW_RSS_ROWS (1,000,000) inserts of ~1 KB rows while
# no worker runs, then starts a release build of `cachewarden run` on the backlog and reports
# how long it took to confirm everything and its peak RSS (GNU time's maximum resident set).
#   bench/backlog_rss.sh            default batch limits
#   CW_RSS_EXTRA='max_batch_bytes = 8388608' bench/backlog_rss.sh
#   CW_RSS_ROWS=50000 CW_WRAP='valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out' \
#     bench/backlog_rss.sh     instructions per change, repeatable on a busy machine
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh >/dev/null
ROWS="${CW_RSS_ROWS:-1000000}"
DB=cw_rss
PG="postgres://postgres@127.0.0.1:5432"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cargo build --release --quiet
BIN="${CW_BIN:-${CARGO_TARGET_DIR:-target}/release/cachewarden}"   # CW_BIN: another build, for before/after
psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
psql -q "$PG/$DB" -c "CREATE TABLE items (id bigint PRIMARY KEY, payload text NOT NULL)" >/dev/null
mkdir -p "$WORK/rules"
cat > "$WORK/rules/items.toml" <<'TOML'
[[rule]]
name = "item"
table = "items"
keys = ["item:{id}"]
TOML
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/cachewarden.toml" <<TOML
rules_dir = "rules"
[postgres]
url = "$PG/$DB"
slot = "$DB"
publication = "$DB"
[redis]
url = "redis://127.0.0.1:6379/0"
key_prefix = "cwrss:"
[status]
listen = "127.0.0.1:$PORT"
[worker]
${CW_RSS_EXTRA:-}
TOML
confirmed() { psql -At "$PG/$DB" -c "SELECT coalesce((confirmed_flush_lsn - '0/0')::text, '0') FROM pg_replication_slots WHERE slot_name = '$DB'"; }
# A first start creates the slot; then the backlog is committed while nothing streams.
"$BIN" --config "$WORK/cachewarden.toml" run >"$WORK/first.log" 2>&1 &
pid=$!
until [ -n "$(confirmed)" ]; do sleep 0.2; done
kill -TERM $pid; wait $pid || true
start=$(date +%s.%N)
for ((i = 0; i < ROWS; i += 10000)); do
  psql -q "$PG/$DB" -c "INSERT INTO items SELECT g, repeat(md5(g::text), 31) FROM generate_series($i + 1, least($i + 10000, $ROWS)) g" >/dev/null
done
target=$(psql -At "$PG/$DB" -c "SELECT (pg_current_wal_lsn() - '0/0')::text")
wal=$(psql -At "$PG/$DB" -c "SELECT pg_size_pretty(($target - $(confirmed))::bigint)")
echo "backlog: $ROWS inserts of ~1 KB rows ($wal of WAL) written in $(echo "$(date +%s.%N) - $start" | bc) s"
start=$(date +%s.%N)
/usr/bin/time -f '%M %U %S' -o "$WORK/rss" ${CW_WRAP:-} "$BIN" --config "$WORK/cachewarden.toml" run >"$WORK/run.log" 2>&1 &
tpid=$!
until [ "$(confirmed)" -ge "$target" ] 2>/dev/null; do sleep 0.5; done
secs=$(echo "$(date +%s.%N) - $start" | bc)
pkill -TERM -P $tpid || true
wait $tpid || true
read -r kib user sys < "$WORK/rss"
echo "worked off in ${secs} s; peak RSS $((kib / 1024)) MiB; CPU ${user} s user + ${sys} s system (limits: ${CW_RSS_EXTRA:-defaults})"
psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
