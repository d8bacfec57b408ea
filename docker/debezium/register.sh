#!/bin/sh
# Registers (or updates) the Debezium connector `edurise` with Kafka Connect. Run by the
# `connect-register` service of docker-compose.yml; a PUT to /connectors/<name>/config creates
# the connector or replaces its config, so running this again is harmless.
set -eu

CONNECT="${CONNECT_URL:-http://connect:8083}"
CONFIG="${CONNECTOR_CONFIG:-/connector/edurise-connector.json}"

echo "waiting for Kafka Connect at $CONNECT"
i=0
until curl -fsS -o /dev/null "$CONNECT/"; do
    i=$((i + 1))
    if [ "$i" -ge 90 ]; then
        echo "Kafka Connect did not answer at $CONNECT" >&2
        exit 1
    fi
    sleep 2
done

# Right after start-up the worker may still be joining its group (409 Conflict), so retry.
i=0
until curl -sS --fail-with-body -X PUT -H 'Content-Type: application/json' \
    --data "@$CONFIG" "$CONNECT/connectors/edurise/config"; do
    i=$((i + 1))
    if [ "$i" -ge 30 ]; then
        echo "could not register the connector" >&2
        exit 1
    fi
    echo "retrying in 2s"
    sleep 2
done
echo
echo "connector edurise registered"
curl -sS "$CONNECT/connectors/edurise/status" || true
echo
