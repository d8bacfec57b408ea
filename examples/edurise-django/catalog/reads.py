"""The app's cached reads, in two modes: ``plain`` cache-aside (``cache.get`` then
``cache.set``) and ``fenced`` (``cachewarden_django.get_or_fill``). Every value records the
versions of the rows it was built from."""

import os
import time

from django.core.cache import cache

from cachewarden_django import get_or_fill

from .models import Course, Lesson

PAGE = 10
#: Work between the database read and the cache write (rendering, serialising): the window in
#: which a concurrent change makes a plain fill stale.
RENDER_SECONDS = 0.004
#: Fresh loads after a refused fill (get_or_fill's ``retries``).
RETRIES = int(os.environ.get("EDURISE_RETRIES", "1"))


class Counter:
    def __init__(self):
        self.reads = 0
        self.misses = 0
        #: Whether the last read was served from the cache.
        self.last_hit = False


def _through(mode, key, load, counter, tags=()):
    counter.reads += 1
    counter.last_hit = True
    if mode == "fenced":
        missed = []

        def counted():
            # One miss per read, however many loads a refused fill's retry makes.
            if not missed:
                missed.append(1)
                counter.misses += 1
                counter.last_hit = False
            return load()

        return get_or_fill(key, counted, tags=tags, retries=RETRIES)
    value = cache.get(key)
    if value is None:
        counter.misses += 1
        counter.last_hit = False
        value = load()
        cache.set(key, value)
        if tags:
            client = cache.client.get_client(write=True)
            for t in tags:
                client.sadd(cache.make_key(f"tag:{t}"), cache.make_key(key))
    return value


def course_detail(mode, course_id, counter):
    def load():
        c = Course.objects.values("id", "title", "version").get(pk=course_id)
        time.sleep(RENDER_SECONDS)
        return {"rows": {f"course:{c['id']}": c["version"]}, "title": c["title"]}

    return _through(mode, f"course:{course_id}", load, counter)


def course_lessons(mode, course_id, counter):
    def load():
        rows = list(Lesson.objects.filter(course_id=course_id).order_by("id").values("id", "title", "version"))
        time.sleep(RENDER_SECONDS)
        return {"rows": {f"lesson:{r['id']}": r["version"] for r in rows}, "titles": [r["title"] for r in rows]}

    return _through(mode, f"course-lessons:{course_id}", load, counter)


def catalog_page(mode, n, counter):
    """Page ``n``: the courses with ids ``n*PAGE+1 .. (n+1)*PAGE`` (so its tags are known before
    the read: each course's tag, and "catalog" for courses added or removed)."""
    ids = range(n * PAGE + 1, (n + 1) * PAGE + 1)

    def load():
        rows = list(Course.objects.filter(id__in=list(ids)).order_by("id").values("id", "title", "version"))
        time.sleep(RENDER_SECONDS)
        return {"rows": {f"course:{r['id']}": r["version"] for r in rows}, "titles": [r["title"] for r in rows]}

    tags = ("catalog", *(f"course:{i}" for i in ids))
    return _through(mode, f"catalog:page:{n}", load, counter, tags=tags)


def current_versions():
    """Every row's version now."""
    out = {f"course:{i}": v for i, v in Course.objects.values_list("id", "version")}
    out.update({f"lesson:{i}": v for i, v in Lesson.objects.values_list("id", "version")})
    return out
