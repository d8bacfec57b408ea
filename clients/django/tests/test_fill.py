"""get_or_fill against a running worker: fills, tags, and the cache-aside race it closes."""

import time

import psycopg
import pytest
from django.core.cache import cache

import cachewarden_django
from cachewarden_django import FOREVER, get_or_fill
from tests.conftest import PG
from tests.testapp.models import Course

pytestmark = pytest.mark.django_db(transaction=True)


def commit_elsewhere(worker, sql, params=()):
    """Commits a change on another connection and waits until the worker has processed it
    (the change's invalidation happened)."""
    with psycopg.connect(PG + f" dbname={worker.db}", autocommit=True) as c:
        c.execute(sql, params)
    worker.caught_up()


def test_a_miss_loads_fills_and_the_next_read_hits(worker, redis_client):
    calls = []

    def load():
        calls.append(1)
        return {"id": 1, "title": "Rust"}

    assert get_or_fill("course:1", load, timeout=60) == {"id": 1, "title": "Rust"}
    assert get_or_fill("course:1", load, timeout=60) == {"id": 1, "title": "Rust"}
    assert len(calls) == 1
    # The application's own make_key, KEY_PREFIX and VERSION: django-redis reads it back.
    assert cache.get("course:1") == {"id": 1, "title": "Rust"}
    full = cache.make_key("course:1")
    assert full == f"{worker.db}:1:course:1"
    assert 0 < redis_client.ttl(full) <= 60
    assert get_or_fill("course:2", lambda: 7, timeout=FOREVER) == 7
    assert redis_client.ttl(cache.make_key("course:2")) == -1
    assert cachewarden_django.stats["filled"] == 2


def test_a_change_committed_while_loading_refuses_the_fill(worker):
    course = Course.objects.create(slug="rust", title="Rust")
    worker.caught_up()

    def load_then_change():
        old = Course.objects.values("id", "title").get(pk=course.pk)
        # The race: the row changes and is invalidated after the read, before the fill.
        commit_elsewhere(worker, "UPDATE courses SET title = 'Rust 2' WHERE id = %s", [course.pk])
        return old

    value = get_or_fill(f"course:{course.pk}", load_then_change, timeout=60, retries=0)
    assert value["title"] == "Rust", "the loaded value is returned"
    assert cache.get(f"course:{course.pk}") is None, "but the stale value is not cached"
    assert cachewarden_django.stats["refused"] == 1
    # The next read fills the new row.
    fresh = get_or_fill(f"course:{course.pk}", lambda: Course.objects.values("id", "title").get(pk=course.pk))
    assert fresh["title"] == "Rust 2"
    assert cache.get(f"course:{course.pk}")["title"] == "Rust 2"


def test_a_refused_fill_is_retried_with_a_fresh_load_by_default(worker):
    course = Course.objects.create(slug="py", title="Py")
    worker.caught_up()
    loads = []

    def load():
        row = Course.objects.values("id", "title").get(pk=course.pk)
        loads.append(row["title"])
        if len(loads) == 1:
            commit_elsewhere(worker, "UPDATE courses SET title = 'Py 2' WHERE id = %s", [course.pk])
        return row

    value = get_or_fill(f"course:{course.pk}", load, timeout=60)
    assert loads == ["Py", "Py 2"]
    assert value["title"] == "Py 2"
    assert cache.get(f"course:{course.pk}")["title"] == "Py 2", "the retry's fresh value is cached"
    assert (cachewarden_django.stats["refused"], cachewarden_django.stats["filled"]) == (1, 1)


def test_concurrent_misses_load_once_and_the_others_wait_for_the_fill(worker):
    import threading

    loads = []
    gate = threading.Event()

    def slow_load():
        loads.append(1)
        gate.wait(1)
        return "loaded once"

    results = []

    def read():
        results.append(get_or_fill("course:500", slow_load, timeout=60, wait=1.0))

    first = threading.Thread(target=read)
    first.start()
    time.sleep(0.1)  # the first reader holds the lease
    others = [threading.Thread(target=read) for _ in range(3)]
    for t in others:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in [first, *others]:
        t.join()
    assert results == ["loaded once"] * 4
    assert len(loads) == 1
    assert cachewarden_django.stats["waited"] == 3
    assert cachewarden_django.stats["filled"] == 1


def test_plain_cache_aside_keeps_the_stale_value_in_the_same_race(worker):
    """What get_or_fill prevents: the same interleaving with cache.get/cache.set."""
    course = Course.objects.create(slug="go", title="Go")
    worker.caught_up()
    key = f"course:{course.pk}"
    assert cache.get(key) is None
    old = Course.objects.values("id", "title").get(pk=course.pk)
    commit_elsewhere(worker, "UPDATE courses SET title = 'Go 2' WHERE id = %s", [course.pk])
    cache.set(key, old, 60)
    assert cache.get(key)["title"] == "Go", "stale until the next change of the row"


def test_tags_register_the_key_and_a_tag_invalidation_refuses_fills_in_flight(worker, redis_client):
    course = Course.objects.create(slug="sql", title="SQL")
    worker.caught_up()
    get_or_fill("page:1", lambda: "page one", timeout=60, tags=["catalog"])
    assert redis_client.sismember(cache.make_key("tag:catalog"), cache.make_key("page:1"))
    # A course change invalidates the tag set and its members.
    commit_elsewhere(worker, "UPDATE courses SET title = 'SQL 2' WHERE id = %s", [course.pk])
    assert cache.get("page:1") is None

    def load_then_change():
        commit_elsewhere(worker, "UPDATE courses SET title = 'SQL 3' WHERE id = %s", [course.pk])
        return "page one, old"

    get_or_fill("page:2", load_then_change, timeout=60, tags=["catalog"], retries=0)
    assert cache.get("page:2") is None
    assert not redis_client.sismember(cache.make_key("tag:catalog"), cache.make_key("page:2"))


def test_a_pattern_invalidation_refuses_fills_of_keys_it_covers(worker):
    course = Course.objects.create(slug="css", title="CSS")
    worker.caught_up()

    def load_then_change():
        commit_elsewhere(worker, "UPDATE courses SET title = 'CSS 2' WHERE id = %s", [course.pk])
        return "catalog, old"

    get_or_fill("catalog:page:3", load_then_change, timeout=60, retries=0)
    assert cache.get("catalog:page:3") is None
    # A key the pattern does not cover is filled as usual.
    get_or_fill("elsewhere:3", load_then_change, timeout=60)
    assert cache.get("elsewhere:3") == "catalog, old"


def test_a_key_of_a_rule_without_the_protocol_is_not_refused(worker):
    """Only the changed rule's families fence: an unrelated key fills even while changes land."""
    course = Course.objects.create(slug="js", title="JS")
    worker.caught_up()

    def load_then_change():
        commit_elsewhere(worker, "UPDATE courses SET title = 'JS 2' WHERE id = %s", [course.pk])
        return "lesson"

    get_or_fill("lesson:999", load_then_change, timeout=60)
    assert cache.get("lesson:999") == "lesson"


def test_redis_down_serves_from_the_loader(worker, settings):
    from django.core.cache import caches

    settings.CACHES = {
        "default": settings.CACHES["default"],
        "down": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"},
    }
    assert get_or_fill("course:1", lambda: "from the database", cache=caches["down"]) == "from the database"
    assert cachewarden_django.stats["errors"] == 1
