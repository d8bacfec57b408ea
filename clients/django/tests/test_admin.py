"""The admin pages of cachewarden's tables."""

import pytest
from django.contrib.auth.models import User

from cachewarden_django.models import CacheConfig, CacheInvalidation, CacheMetric

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_client(client):
    user = User.objects.create_superuser("ops", "ops@example.com", "pw")
    client.force_login(user)
    return client


def test_rules_can_be_switched_off_and_the_change_is_recorded(worker, admin_client):
    config = CacheConfig.objects.get(name="lesson")
    page = admin_client.get("/admin/cachewarden/cacheconfig/")
    assert page.status_code == 200
    assert b"course" in page.content and b"lesson" in page.content
    r = admin_client.post(
        f"/admin/cachewarden/cacheconfig/{config.pk}/change/",
        {"is_active": "", "ttl": "120", "strategy": "invalidate"},
    )
    assert r.status_code == 302, r.content[:2000]
    config.refresh_from_db()
    assert config.is_active is False
    assert config.ttl == 120
    assert config.updated_by == "django-admin:ops"
    # The worker takes the switch: the rule is listed as disabled.
    import time

    deadline = time.time() + 10
    while "lesson" not in worker.status()["disabled_rules"]:
        assert time.time() < deadline, worker.status()
        time.sleep(0.1)
    config.is_active = True
    config.save(update_fields=["is_active"])


def test_the_journal_and_metrics_are_read_only_and_filterable(worker, admin_client):
    from cachewarden_django import invalidate

    invalidate("admin:probe", reason="admin test")
    r = admin_client.get("/admin/cachewarden/cacheinvalidation/?status__exact=completed")
    assert r.status_code == 200
    r = admin_client.get("/admin/cachewarden/cacheinvalidation/?status__exact=failed")
    assert r.status_code == 200
    assert admin_client.get("/admin/cachewarden/cacheinvalidation/add/").status_code == 403
    row = CacheInvalidation.objects.first()
    assert admin_client.post(f"/admin/cachewarden/cacheinvalidation/{row.pk}/delete/").status_code == 403
    # Metrics: the worker writes a sample every 2 s here.
    import time

    deadline = time.time() + 10
    while not CacheMetric.objects.exists():
        assert time.time() < deadline
        time.sleep(0.2)
    assert admin_client.get("/admin/cachewarden/cachemetric/").status_code == 200
