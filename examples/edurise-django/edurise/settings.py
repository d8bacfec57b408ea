"""An EduRise-style Django app for cachewarden's workload: courses, lessons and catalog pages
read cache-aside through django-redis, written by concurrent writers."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "workload-only"
DEBUG = False
USE_TZ = True
DB = os.environ.get("EDURISE_DB", "edurise_workload")
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": DB,
        "USER": os.environ.get("PGUSER", "postgres"),
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
    }
}
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": os.environ.get("EDURISE_REDIS", "redis://127.0.0.1:6379/0"),
        # Keys look like "<db>:1:course:42": the worker runs with key_prefix = "<db>:1:".
        "KEY_PREFIX": DB,
        "TIMEOUT": 3600,
    }
}
CACHEWARDEN = {"RULES_DIR": BASE_DIR / "rules"}
INSTALLED_APPS = ["django.contrib.contenttypes", "cachewarden_django", "catalog"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
