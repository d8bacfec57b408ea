from django.db import migrations

from cachewarden_django.operations import SetReplicaIdentity


class Migration(migrations.Migration):
    """The course-lessons rule renders the old row's course_id (a lesson moved or deleted):
    the WAL must carry it. `manage.py check --database default` (cachewarden.W001) says so."""

    dependencies = [("catalog", "0001_initial")]
    operations = [SetReplicaIdentity("lesson", "FULL")]
