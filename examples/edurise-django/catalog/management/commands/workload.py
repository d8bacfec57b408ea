"""The EduRise-style workload: reader threads serve course pages, lesson lists and catalog
pages cache-aside (``--mode plain`` or ``fenced``), writer threads change rows, then everything
quiesces and every cached value is checked against the database. Prints one JSON line:
hit ratio, reads, misses, fills refused, stale reads beyond the lag bound, stale entries left.

A *stale hit* is a read served from the cache showing a row older than a version committed
before the read began (the fresh hit ratio leaves those out). A read is *stale beyond the bound* when a row it shows had a newer version committed more than
``--bound`` seconds before the read began. An entry is *stale after quiescence* when, once the
writers stopped and the worker confirmed everything, a cached value shows an older version of a
row than the database holds.
"""

import json
import random
import threading
import time

from django.core.cache import cache
from django.core.management.base import BaseCommand
from django.db import connection, transaction

import cachewarden_django
from catalog import reads
from catalog.models import Course, Lesson


class Command(BaseCommand):
    help = "Runs the EduRise-style cache workload and prints its figures as JSON."

    def add_arguments(self, p):
        p.add_argument("--mode", choices=["plain", "fenced"], required=True)
        p.add_argument("--seconds", type=float, default=20)
        p.add_argument("--readers", type=int, default=6)
        p.add_argument("--writers", type=int, default=2)
        p.add_argument("--write-pause", type=float, default=0.02, help="seconds between one writer's commits")
        p.add_argument("--courses", type=int, default=1000)
        p.add_argument("--lessons-per-course", type=int, default=5)
        p.add_argument("--bound", type=float, default=0.5, help="the lag bound, seconds")
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--reset", action="store_true", help="recreate the rows first")
        p.add_argument("--settle", type=float, default=2.0, help="seconds to wait for the worker after the writers stop")
        p.add_argument(
            "--write-skew",
            choices=["uniform", "zipf"],
            default="uniform",
            help="which rows writers change: any row alike (default), or the popular rows readers read most",
        )

    def handle(self, *args, **o):
        if o["reset"]:
            self.reset(o["courses"], o["lessons_per_course"])
        self.flush_cache()
        for k in cachewarden_django.stats:
            cachewarden_django.stats[k] = 0
        # (row, version) -> commit time, for stale-read judging.
        committed = {}
        committed_lock = threading.Lock()
        with connection.cursor() as c:
            c.execute("SELECT id, version FROM courses")
            for i, v in c.fetchall():
                committed[(f"course:{i}", v)] = 0.0
            c.execute("SELECT id, version FROM lessons")
            for i, v in c.fetchall():
                committed[(f"lesson:{i}", v)] = 0.0
        course_ids = list(Course.objects.values_list("id", flat=True))
        lesson_ids = list(Lesson.objects.values_list("id", flat=True))
        stop = threading.Event()
        results = {"stale_reads": 0, "stale_hits": 0, "reads": 0, "misses": 0, "writes": 0, "examples": []}
        lock = threading.Lock()
        pages = max(1, len(course_ids) // reads.PAGE)

        def zipf(rng, n):
            # Popular items first: a skewed choice like real traffic.
            return min(n - 1, int(rng.paretovariate(1.2)) - 1)

        def reader(seed):
            rng = random.Random(seed)
            counter = reads.Counter()
            stale = 0
            stale_hits = 0
            examples = []
            try:
                while not stop.is_set():
                    began = time.time()
                    kind = rng.random()
                    if kind < 0.5:
                        v = reads.course_detail(o["mode"], course_ids[zipf(rng, len(course_ids))], counter)
                    elif kind < 0.8:
                        v = reads.course_lessons(o["mode"], course_ids[zipf(rng, len(course_ids))], counter)
                    else:
                        v = reads.catalog_page(o["mode"], zipf(rng, pages), counter)
                    with committed_lock:
                        newer = [
                            (row, ver, committed[(row, ver + 1)])
                            for row, ver in v["rows"].items()
                            if (row, ver + 1) in committed and committed[(row, ver + 1)] < began
                        ]
                    # A hit showing a row older than one committed before the read began: served
                    # stale (within or beyond the lag bound).
                    if counter.last_hit and newer:
                        stale_hits += 1
                    beyond = [n for n in newer if n[2] < began - o["bound"]]
                    if beyond:
                        stale += 1
                        row, ver, t = beyond[0]
                        if len(examples) < 3:
                            examples.append({"row": row, "read": ver, "newer_committed_s_before": round(began - t, 3)})
            finally:
                connection.close()
            with lock:
                results["reads"] += counter.reads
                results["misses"] += counter.misses
                results["stale_reads"] += stale
                results["stale_hits"] += stale_hits
                results["examples"] += examples

        def writer(seed):
            rng = random.Random(seed)
            n = 0
            try:
                while not stop.is_set():
                    if rng.random() < 0.6:
                        row, table, ids = "course", "courses", course_ids
                    else:
                        row, table, ids = "lesson", "lessons", lesson_ids
                    i = ids[zipf(rng, len(ids)) if o["write_skew"] == "zipf" else rng.randrange(len(ids))]
                    with transaction.atomic():
                        with connection.cursor() as c:
                            c.execute(
                                f"UPDATE {table} SET version = version + 1, title = title || '.' "
                                f"WHERE id = %s RETURNING version",
                                [i],
                            )
                            ver = c.fetchone()[0]
                    with committed_lock:
                        committed[(f"{row}:{i}", ver)] = time.time()
                    n += 1
                    time.sleep(o["write_pause"])
            finally:
                connection.close()
            with lock:
                results["writes"] += n

        threads = [threading.Thread(target=reader, args=(o["seed"] * 100 + k,)) for k in range(o["readers"])]
        threads += [threading.Thread(target=writer, args=(o["seed"] * 1000 + k,)) for k in range(o["writers"])]
        started = time.time()
        for t in threads:
            t.start()
        time.sleep(o["seconds"])
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.time() - started
        time.sleep(o["settle"])
        stale_entries, examples = self.check_entries()
        print(json.dumps({
            "mode": o["mode"],
            "write_skew": o["write_skew"],
            "seconds": round(elapsed, 1),
            "reads": results["reads"],
            "misses": results["misses"],
            "hit_ratio": round(1 - results["misses"] / max(1, results["reads"]), 4),
            # Hits that showed every row as it was when the read began.
            "fresh_hit_ratio": round(
                (results["reads"] - results["misses"] - results["stale_hits"]) / max(1, results["reads"]), 4
            ),
            "stale_hits": results["stale_hits"],
            "writes": results["writes"],
            "fills_refused": cachewarden_django.stats["refused"],
            "stale_reads_beyond_bound": results["stale_reads"],
            "stale_entries_after_quiescence": stale_entries,
            "examples": (results["examples"] + examples)[:5],
        }))

    def reset(self, courses, lessons_per_course):
        with connection.cursor() as c:
            c.execute("TRUNCATE lessons, courses RESTART IDENTITY")
        Course.objects.bulk_create(Course(slug=f"c{i}", title=f"Course {i}") for i in range(courses))
        ids = list(Course.objects.values_list("id", flat=True))
        Lesson.objects.bulk_create(Lesson(course_id=c, title=f"Lesson {c}.{j}") for c in ids for j in range(lessons_per_course))

    def flush_cache(self):
        client = cache.client.get_client(write=True)
        for k in client.scan_iter(match=cache.make_key("*"), count=1000):
            client.unlink(k)

    def check_entries(self):
        now = reads.current_versions()
        client = cache.client.get_client(write=True)
        stale = 0
        examples = []
        prefix = cache.make_key("")
        for full in client.scan_iter(match=prefix + "*", count=1000):
            key = full.decode()[len(prefix):]
            if key.startswith(("cw:", "tag:")):
                continue
            value = cache.get(key)
            if not isinstance(value, dict) or "rows" not in value:
                continue
            behind = [r for r, v in value["rows"].items() if now.get(r, v) > v]
            # A list (lessons of a course, a catalog page) is also stale when rows joined it.
            if behind:
                stale += 1
                if len(examples) < 3:
                    examples.append({"entry": key, "behind": behind[:3]})
        return stale, examples
