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
from typing import Any, Callable, Iterable, Optional

from .fill import FILL_SCRIPT, FILL_TOKEN_SCRIPT

__all__ = ["get_or_fill", "invalidate", "worker_prefix", "FOREVER", "stats"]

log = logging.getLogger("cachewarden_django")

#: ``timeout=FOREVER`` caches without expiry (``None`` means the cache's default timeout).
FOREVER = object()

_MISSING = object()

#: Fills done and refused by this process (for tests and metrics).
stats = {"filled": 0, "refused": 0, "errors": 0}


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


def _scripts(client):
    # redis-py's Script objects cache the SHA and reload on NOSCRIPT.
    return client.register_script(FILL_TOKEN_SCRIPT), client.register_script(FILL_SCRIPT)


def get_or_fill(
    key: str,
    loader: Callable[[], Any],
    timeout: Any = None,
    tags: Iterable[str] = (),
    *,
    cache=None,
    version: Optional[int] = None,
    retries: int = 1,
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
    raises because a fill was refused or Redis failed after the load."""
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
    for attempt in range(retries + 1):
        try:
            client = cache.client.get_client(write=True)
            take_token, fill = _scripts(client)
            token = take_token(keys=[full, *tag_keys], args=[prefix])
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
