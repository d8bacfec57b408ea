#!/usr/bin/env bash
# HA takeover after a network partition (not a kill): the active instance runs in a network
# namespace of its own; its link to PostgreSQL and Redis is cut, and the standby on the host must
# take over once the server drops the lost lease session (server-side TCP keepalives, ~4 s).
# Needs root (ip netns). Prints the time from the cut to the standby being active and to a change
# committed after the cut being invalidated.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
cargo build --release --quiet
T="${CARGO_TARGET_DIR:-target}"; case "$T" in /*) ;; *) T="$(pwd)/$T";; esac; BIN="$T/release/cachewarden"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort | tail -1)
NS=cwha; HOST_IP=10.213.0.1; NS_IP=10.213.0.2
WORK=$(mktemp -d); chmod 755 "$WORK"
PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() {
  pkill -f "$WORK/" 2>/dev/null || true
  redis-cli -p "$RPORT" shutdown nosave >/dev/null 2>&1 || true
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  ip netns del $NS 2>/dev/null || true
  ip link del cwha-h 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add $NS
ip link add cwha-h type veth peer name cwha-n
ip link set cwha-n netns $NS
ip addr add $HOST_IP/30 dev cwha-h; ip link set cwha-h up
ip netns exec $NS ip addr add $NS_IP/30 dev cwha-n
ip netns exec $NS ip link set cwha-n up; ip netns exec $NS ip link set lo up
chown postgres "$WORK"
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg" -U postgres --auth=trust --no-sync >/dev/null
echo "host all all 10.213.0.0/30 trust" >> "$WORK/pg/pg_hba.conf"
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w \
  -o "-p $PGPORT -k $WORK -c listen_addresses='127.0.0.1,$HOST_IP' -c wal_level=logical" start >/dev/null
redis-server --port "$RPORT" --bind "127.0.0.1 $HOST_IP" --protected-mode no --save "" --daemonize yes \
  --logfile "$WORK/redis.log" >/dev/null
PG="postgres://postgres@$HOST_IP:$PGPORT"
psql -q "$PG/postgres" -c "CREATE DATABASE ha" >/dev/null
psql -q "$PG/ha" -c "CREATE TABLE items (id int PRIMARY KEY, val int NOT NULL)" >/dev/null
mkdir -p "$WORK/rules"
printf '[[rule]]\nname = "item"\ntable = "items"\nkeys = ["item:{id}"]\n' > "$WORK/rules/items.toml"
for n in a b; do
  cat > "$WORK/$n.toml" <<TOML
rules_dir = "rules"
[postgres]
url = "$PG/ha"
slot = "ha"
publication = "ha"
[redis]
url = "redis://$HOST_IP:$RPORT/0"
[status]
listen = "127.0.0.1:$([ $n = a ] && echo 18461 || echo 18462)"
TOML
done
wait_for() { # wait_for <seconds> <description> <command...>
  local until=$(( $(date +%s) + $1 )); local what=$2; shift 2
  until "$@"; do
    [ "$(date +%s)" -lt "$until" ] || { echo "timed out: $what" >&2; for f in "$WORK"/*.log; do echo "== $f"; tail -n 5 "$f"; done >&2; exit 1; }
    sleep 0.05
  done
}
is_role() { [ "$(role "$1" "$2")" = "$3" ]; }
role() { # role <netns-or-host> <port>
  local cmd=(python3 -c "import json,urllib.request;print(json.load(urllib.request.urlopen('http://127.0.0.1:$2/status',timeout=1))['role'])")
  if [ "$1" = ns ]; then ip netns exec $NS "${cmd[@]}" 2>/dev/null; else "${cmd[@]}" 2>/dev/null; fi
}
ip netns exec $NS "$BIN" --config "$WORK/a.toml" run >"$WORK/a.log" 2>&1 &
wait_for 30 "A active" is_role ns 18461 active
"$BIN" --config "$WORK/b.toml" run >"$WORK/b.log" 2>&1 &
wait_for 30 "B standby" is_role host 18462 standby
sleep 1
redis-cli -p "$RPORT" set item:1 cached >/dev/null
ip link set cwha-h down
cut=$(date +%s.%N)
psql -q "postgresql://postgres@127.0.0.1:$PGPORT/ha" -c "INSERT INTO items VALUES (1, 0)" >/dev/null
wait_for 60 "B takes over" is_role host 18462 active
active=$(echo "$(date +%s.%N) - $cut" | bc)
gone_key() { [ "$(redis-cli -p "$RPORT" exists item:1)" = 0 ]; }
wait_for 60 "the change invalidated" gone_key
gone=$(echo "$(date +%s.%N) - $cut" | bc)
printf 'partition: standby active %.1f s after the cut; a change committed after the cut invalidated %.1f s after it\n' "$active" "$gone"
