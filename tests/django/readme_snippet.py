"""Runs README's django-redis snippet as written against a running worker.

Driven by tests/django_readme.rs, which starts the worker with the example rules on a database
of the example schema. Environment: CW_DB (database name), CW_REDIS_URL, CW_KEY_PREFIX
(Django's KEY_PREFIX), CW_README (path to README.md). Prints "ok" when every step held.
"""
import json
import os
import time

import django
from django.conf import settings

settings.configure(
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ["CW_DB"],
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": "5432",
        }
    },
    CACHES={
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": os.environ["CW_REDIS_URL"],
            "KEY_PREFIX": os.environ["CW_KEY_PREFIX"],
            "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"},
        }
    },
    USE_TZ=True,
)
django.setup()

from django.core.cache import cache  # noqa: E402
from django.db import connection  # noqa: E402

readme = open(os.environ["CW_README"], encoding="utf-8").read()
block = readme.split("<!-- django-snippet -->", 1)[1]
code = block.split("```python\n", 1)[1].split("```", 1)[0]
snippet = {}
exec(compile(code, "README.md (django-snippet)", "exec"), snippet)


def eventually(what, cond, timeout=15.0):
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out: {what}")
        time.sleep(0.05)


def sql(statement, params=()):
    with connection.cursor() as cur:
        cur.execute(statement, params)


sql("INSERT INTO courses (id, slug, title) VALUES (1, 'rust', 'Rust')")
first = json.loads(snippet["course_detail"](1))
assert first["title"] == "Rust", first
assert cache.get("course:1") is not None, "course_detail caches"

# A change in the database: the worker deletes the key, the next read sees the new row.
sql("UPDATE courses SET title = 'Rust 2' WHERE id = 1")
eventually("the worker invalidates course:1", lambda: cache.get("course:1") is None)
assert json.loads(snippet["course_detail"](1))["title"] == "Rust 2"

# Tagged catalog pages go with any course change.
page = snippet["catalog_page"](1, lambda n: f"page {n}")
assert page == "page 1" and cache.get("catalog:page:1") == "page 1"
sql("UPDATE courses SET title = 'Rust 3' WHERE id = 1")
eventually("the catalog tag's pages go", lambda: cache.get("catalog:page:1") is None)

# An application request, executed by the worker's poller and journaled.
snippet["course_detail"](1)
assert cache.get("course:1") is not None
snippet["invalidate_cache"]("course:*", "readme test")


def request_done():
    with connection.cursor() as cur:
        cur.execute("SELECT status FROM cache_invalidations WHERE reason = 'readme test'")
        row = cur.fetchone()
    return row is not None and row[0] == "completed"


eventually("the request is completed", request_done)
assert cache.get("course:1") is None, "the request removed the key"
print("ok")
