"""The REPLICA IDENTITY system check and the migration operation that fixes what it reports."""

import pytest
from django.db import connection

from cachewarden_django.checks import replica_identity
from cachewarden_django.operations import SetReplicaIdentity
from tests.testapp.models import Course

pytestmark = pytest.mark.django_db(transaction=True)


def identity():
    with connection.cursor() as c:
        c.execute("SELECT relreplident FROM pg_class WHERE oid = 'courses'::regclass")
        return c.fetchone()[0]


def test_a_rule_reading_old_values_needs_full_identity_and_the_operation_sets_it(worker):
    # The test app's migration set FULL: nothing to report.
    assert identity() == "f"
    assert replica_identity(databases=["default"]) == []
    from django.apps import apps as global_apps
    from django.db.migrations.state import ProjectState

    state = ProjectState.from_apps(global_apps)
    op = SetReplicaIdentity("course", "FULL")
    with connection.schema_editor() as editor:
        op.database_backwards("testapp", editor, state, state)
    try:
        assert identity() == "d"
        found = replica_identity(databases=["default"])
        assert [w.id for w in found] == ["cachewarden.W001"], found
        w = found[0]
        assert "'course'" in w.msg and "slug ({old.slug})" in w.msg and "DEFAULT" in w.msg
        assert "SetReplicaIdentity('course', 'FULL')" in w.hint
        assert "ALTER TABLE public.courses REPLICA IDENTITY FULL;" in w.hint
        assert w.obj is Course
    finally:
        with connection.schema_editor() as editor:
            op.database_forwards("testapp", editor, state, state)
    assert identity() == "f"
    assert replica_identity(databases=["default"]) == []


def test_the_operation_describes_and_deconstructs_itself():
    op = SetReplicaIdentity("lesson", "full")
    assert op.describe() == "Set REPLICA IDENTITY FULL on lesson"
    assert op.deconstruct() == ("SetReplicaIdentity", ["lesson", "FULL"], {})
    with pytest.raises(ValueError):
        SetReplicaIdentity("lesson", "everything")
