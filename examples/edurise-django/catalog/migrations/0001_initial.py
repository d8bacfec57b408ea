from django.db import migrations, models


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
                ("version", models.IntegerField(default=1)),
            ],
            options={"db_table": "courses"},
        ),
        migrations.CreateModel(
            name="Lesson",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("title", models.TextField()),
                ("version", models.IntegerField(default=1)),
                ("course", models.ForeignKey(on_delete=models.deletion.CASCADE, related_name="lessons", to="catalog.course")),
            ],
            options={"db_table": "lessons"},
        ),
    ]
