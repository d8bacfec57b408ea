from django.db import migrations, models

import cachewarden_django.operations


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel(
            name="Course",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("slug", models.TextField(unique=True)),
                ("title", models.TextField()),
            ],
            options={"db_table": "courses"},
        ),
        migrations.CreateModel(
            name="Lesson",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("title", models.TextField()),
                ("course", models.ForeignKey(on_delete=models.deletion.CASCADE, to="testapp.course")),
            ],
            options={"db_table": "lessons"},
        ),
        # The course rule renders course-slug:{old.slug}: the WAL must carry the old row.
        cachewarden_django.operations.SetReplicaIdentity("course", "FULL"),
    ]
