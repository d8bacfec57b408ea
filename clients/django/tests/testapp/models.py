from django.db import models


class Course(models.Model):
    slug = models.TextField(unique=True)
    title = models.TextField()

    class Meta:
        db_table = "courses"


class Lesson(models.Model):
    course = models.ForeignKey(Course, on_delete=models.CASCADE)
    title = models.TextField()

    class Meta:
        db_table = "lessons"
