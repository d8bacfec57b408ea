from django.apps import AppConfig


class CachewardenConfig(AppConfig):
    name = "cachewarden_django"
    label = "cachewarden"
    verbose_name = "cachewarden"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import checks  # noqa: F401  (registers the system checks)
