from django.db import models


class Course(models.Model):
    slug = models.TextField(unique=True)
    title = models.TextField()
    #: Incremented by every write: what a cached value was built from is checkable.
    version = models.IntegerField(default=1)

    class Meta:
        db_table = "courses"


class Lesson(models.Model):
    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="lessons")
    title = models.TextField()
    version = models.IntegerField(default=1)

    class Meta:
        db_table = "lessons"
