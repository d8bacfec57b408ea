"""cachewarden's Django companion.

* :func:`get_or_fill` — cache-aside through the configured django-redis cache whose fill is
  refused when cachewarden invalidated the key, its tags or its rule's family after the read
  began (rules with ``fenced_fills = true``).
* :func:`invalidate` — a journaled invalidation request, committed with the caller's
  transaction.
* Admin pages for ``cache_configs``, ``cache_invalidations`` and ``cache_metrics``; a system
  check for the REPLICA IDENTITY the rules need and :class:`~cachewarden_django.operations.SetReplicaIdentity`
  to set it in a migration.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Iterable, Optional

from .fill import FILL_SCRIPT

__all__ = ["get_or_fill", "invalidate", "worker_prefix", "FOREVER", "stats"]

log = logging.getLogger("cachewarden_django")

#: ``timeout=FOREVER`` caches without expiry (``None`` means the cache's default timeout).
FOREVER = object()

_MISSING = object()

#: Fills done and refused, and misses answered by another reader's fill, in this process (for
#: tests and metrics).
stats = {"filled": 0, "refused": 0, "errors": 0, "waited": 0}

#: How long a fill lease lives at most (a reader that died while loading frees it then).
LEASE_MS = 2000


def _cache(cache):
    if cache is not None:
        return cache
    from django.core.cache import cache as default

    return default


def worker_prefix(cache=None, version=None) -> str:
    """The ``[redis] key_prefix`` the worker must run with for this cache: what django-redis puts
    before every key (``":1:"`` with the default ``KEY_PREFIX`` and ``VERSION``). Settings may
    name it: ``CACHEWARDEN = {"KEY_PREFIX": ...}``."""
    from django.conf import settings

    configured = getattr(settings, "CACHEWARDEN", {}).get("KEY_PREFIX")
    if configured is not None:
        return configured
    return _cache(cache).make_key("", version=version)


def _script(client):
    # redis-py's Script objects cache the SHA and reload on NOSCRIPT.
    return client.register_script(FILL_SCRIPT)


def get_or_fill(
    key: str,
    loader: Callable[[], Any],
    timeout: Any = None,
    tags: Iterable[str] = (),
    *,
    cache=None,
    version: Optional[int] = None,
    retries: int = 1,
    wait: float = 0.05,
) -> Any:
    """The cached value of ``key``; on a miss, ``loader()``'s value, cached unless cachewarden
    invalidated the key, one of ``tags`` or a pattern covering them after this call began (the
    value then belongs to an older row: it is returned but not cached).

    ``key`` is the application's key (``make_key``, ``KEY_PREFIX`` and ``VERSION`` apply).
    ``timeout``: seconds, ``None`` for the cache's default, :data:`FOREVER` for no expiry.
    ``tags``: tag names (``"catalog"`` is the set ``tag:catalog``), which the key joins when it is
    cached. A refused fill is retried ``retries`` times (a new token, a new load): the value then
    loaded began after the invalidation, so it is cached and the next read hits, as a plain
    cache-aside fill would have (with the old value). Returns the last value loaded. Never
    raises because a fill was refused or Redis failed after the load.

    Concurrent misses of one key load once: the first reader takes a short *lease*
    (``<prefix>cw:l:<key>``, ``SET NX``); the others wait up to ``wait`` seconds for its fill
    and return the cached value (a hit), loading themselves only if none lands in time
    (Meta's memcache leases; ``wait=0`` turns it off)."""
    cache = _cache(cache)
    try:
        value = cache.get(key, _MISSING, version=version)
    except Exception as e:  # Redis down: serve from the database.
        log.warning("cachewarden: cannot read %s from the cache: %s", key, e)
        stats["errors"] += 1
        return loader()
    if value is not _MISSING:
        return value
    full = cache.make_key(key, version=version)
    tag_keys = [cache.make_key(f"tag:{t}", version=version) for t in tags]
    prefix = worker_prefix(cache, version)
    # Seconds for EX, 0 for no expiry; Django's timeouts of 0 or less mean "do not cache".
    chosen = cache.default_timeout if timeout is None else timeout
    if chosen is FOREVER or chosen is None:
        seconds = 0
    elif chosen <= 0:
        return loader()
    else:
        seconds = max(1, math.ceil(chosen))
    rest = full[len(prefix):] if full.startswith(prefix) else full
    lease = f"{prefix}cw:l:{rest}"
    try:
        client = cache.client.get_client(write=True)
        leased = bool(client.set(lease, b"1", nx=True, px=LEASE_MS)) if wait > 0 else False
    except Exception as e:  # Redis down: load and do not cache.
        log.warning("cachewarden: cannot reach the cache for %s: %s", full, e)
        stats["errors"] += 1
        return loader()
    if wait > 0 and not leased:
        # Another reader is loading this key: its fill is what we would fill.
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            time.sleep(min(0.003, max(0.0, deadline - time.monotonic())))
            try:
                value = cache.get(key, _MISSING, version=version)
            except Exception:
                break
            if value is not _MISSING:
                stats["waited"] += 1
                return value
    try:
        for attempt in range(retries + 1):
            try:
                fill = _script(client)
                token = fill(keys=[full, *tag_keys], args=[prefix])
            except Exception as e:  # Redis down: load and do not cache.
                log.warning("cachewarden: cannot take a fill token for %s: %s", full, e)
                stats["errors"] += 1
                return loader()
            value = loader()
            try:
                filled = fill(keys=[full, *tag_keys], args=[prefix, token, cache.client.encode(value), seconds])
            except Exception as e:
                log.warning("cachewarden: fill of %s failed: %s", full, e)
                stats["errors"] += 1
                return value
            if filled:
                stats["filled"] += 1
                return value
            stats["refused"] += 1
            log.debug("cachewarden: fill of %s refused (attempt %d): invalidated while loading", full, attempt + 1)
        return value
    finally:
        if leased:
            try:
                client.delete(lease)
            except Exception:
                pass


def invalidate(pattern: str, reason: str = "", *, using: str = "default", cache=None, raw: bool = False) -> str:
    """Asks cachewarden to invalidate ``pattern`` (a key, or a Redis glob such as
    ``"catalog:page:*"``, as the application names keys) with a ``cache_invalidations`` request
    row, through the Django connection ``using``: inside ``transaction.atomic()`` the request
    commits (or rolls back) with the transaction. The worker runs it within one control
    interval, journaled. Returns the row's id."""
    from django.db import connections

    full = pattern if raw else worker_prefix(cache) + pattern
    kind = "pattern" if any(c in full for c in "*?[") else "key"
    with connections[using].cursor() as cur:
        cur.execute(
            "INSERT INTO cache_invalidations (key_pattern, kind, reason, status) "
            "VALUES (%s, %s, %s, 'pending') RETURNING id::text",
            [full, kind, reason or "requested by the application"],
        )
        return cur.fetchone()[0]
