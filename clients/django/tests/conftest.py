"""A real stack for the companion's tests: the database (created from the test app's
migrations, so SetReplicaIdentity runs), Redis, and a cachewarden worker started from
$CACHEWARDEN_BIN with the rules in tests/rules, its own slot, publication and key prefix."""

import os
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

HERE = Path(__file__).parent
PG = "host={} port={} user={}".format(
    os.environ.get("PGHOST", "127.0.0.1"), os.environ.get("PGPORT", "5432"), os.environ.get("PGUSER", "postgres")
)


def _admin():
    return psycopg.connect(PG + " dbname=postgres", autocommit=True)


def _drop(name):
    with _admin() as c:
        for _ in range(50):
            c.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s AND active_pid IS NOT NULL", [name])
            try:
                c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", [name])
                break
            except psycopg.Error:
                time.sleep(0.1)
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _free_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Worker:
    def __init__(self, db, bin_path):
        self.db = db
        self.dir = Path(tempfile.mkdtemp(prefix="cwdj-"))
        self.listen = f"127.0.0.1:{_free_port()}"
        self.prefix = f"{db}:1:"
        self.config = self.dir / "cachewarden.toml"
        self.config.write_text(
            f'rules_dir = "{HERE / "rules"}"\n'
            f'[postgres]\nurl = "postgres://{os.environ.get("PGUSER", "postgres")}@{os.environ.get("PGHOST", "127.0.0.1")}:{os.environ.get("PGPORT", "5432")}/{db}"\n'
            f'slot = "{db}"\npublication = "{db}"\n'
            f'[redis]\nurl = "{settings.CACHES["default"]["LOCATION"]}"\nkey_prefix = "{self.prefix}"\n'
            f'[status]\nlisten = "{self.listen}"\n'
            f"[worker]\ncontrol_interval_ms = 100\nmax_backoff_ms = 500\n"
            f'[monitor]\ninterval = "2s"\n'
        )
        self.bin = bin_path
        self.log = open(self.dir / "worker.log", "w")
        subprocess.run([bin_path, "--config", str(self.config), "migrate"], check=True, capture_output=True)
        self.proc = subprocess.Popen([bin_path, "--config", str(self.config), "run"], stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready()

    def status(self):
        import json

        with urllib.request.urlopen(f"http://{self.listen}/status", timeout=2) as r:
            return json.load(r)

    def wait_ready(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.listen}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited: {(self.dir / 'worker.log').read_text()}")
            time.sleep(0.1)
        raise RuntimeError(f"the worker is not ready: {(self.dir / 'worker.log').read_text()}")

    def caught_up(self, timeout=15):
        """Waits until the worker confirmed everything committed so far."""
        with psycopg.connect(PG + f" dbname={self.db}", autocommit=True) as c:
            target = c.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
            deadline = time.time() + timeout
            while time.time() < deadline:
                done = c.execute(
                    "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                    [target, self.db],
                ).fetchone()
                if done and done[0]:
                    return
                # Idle: the worker confirms on its next status interval; a write moves it on.
                time.sleep(0.05)
        raise AssertionError(f"the worker did not catch up to {target}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def django_db_setup(django_db_blocker):
    """The test database is made here (not by pytest-django), with the app's migrations, and
    kept for the session: the worker streams from it."""
    from django.core.management import call_command

    db = settings.DATABASES["default"]["NAME"]
    _drop(db)
    with _admin() as c:
        c.execute(f'CREATE DATABASE "{db}"')
    with django_db_blocker.unblock():
        call_command("migrate", verbosity=0)
    yield
    with django_db_blocker.unblock():
        from django.db import connections

        connections.close_all()


@pytest.fixture(scope="session")
def worker(django_db_setup):
    bin_path = os.environ.get("CACHEWARDEN_BIN")
    if not bin_path:
        pytest.fail("CACHEWARDEN_BIN must name the cachewarden binary (the crate's tests set it)")
    w = Worker(settings.DATABASES["default"]["NAME"], bin_path)
    yield w
    w.stop()
    _drop(w.db)


@pytest.fixture
def redis_client():
    from django.core.cache import cache

    return cache.client.get_client(write=True)


@pytest.fixture(autouse=True)
def _clean_cache(redis_client):
    prefix = f"{settings.DATABASES['default']['NAME']}:1:"
    for k in redis_client.scan_iter(match=prefix + "*", count=1000):
        redis_client.unlink(k)
    import cachewarden_django

    for k in cachewarden_django.stats:
        cachewarden_django.stats[k] = 0
    yield
