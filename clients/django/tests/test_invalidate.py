"""invalidate(): a journaled request that commits with the caller's transaction."""

import time

import pytest
from django.core.cache import cache
from django.db import transaction

from cachewarden_django import invalidate
from cachewarden_django.models import CacheInvalidation

pytestmark = pytest.mark.django_db(transaction=True)


def wait_status(row_id, want, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        row = CacheInvalidation.objects.get(pk=row_id)
        if row.status == want:
            return row
        time.sleep(0.05)
    raise AssertionError(f"row {row_id} is {row.status}, not {want}")


def test_a_request_in_a_committed_transaction_is_executed_and_journaled(worker):
    cache.set("report:1", "x", 60)
    cache.set("report:2", "y", 60)
    with transaction.atomic():
        row_id = invalidate("report:*", reason="monthly reports rebuilt")
    row = wait_status(row_id, "completed")
    assert row.key_pattern == cache.make_key("report:*")
    assert row.kind == "pattern"
    assert row.reason == "monthly reports rebuilt"
    assert cache.get("report:1") is None and cache.get("report:2") is None


def test_a_request_in_a_rolled_back_transaction_never_happens(worker):
    cache.set("report:3", "z", 60)
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            row_id = invalidate("report:3")
            raise RuntimeError("the view failed")
    assert not CacheInvalidation.objects.filter(pk=row_id).exists()
    time.sleep(0.5)  # five control intervals
    assert cache.get("report:3") == "z"


def test_one_key(worker):
    cache.set("course:77", "v", 60)
    row_id = invalidate("course:77", reason="support ticket 12")
    row = wait_status(row_id, "completed")
    assert row.kind == "key"
    assert cache.get("course:77") is None
