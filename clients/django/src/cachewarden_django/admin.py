from django.contrib import admin

from .models import CacheConfig, CacheInvalidation, CacheMetric


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(CacheConfig)
class CacheConfigAdmin(admin.ModelAdmin):
    list_display = ["name", "table_name", "key_pattern", "is_active", "ttl", "strategy", "updated_at", "updated_by"]
    list_editable = ["is_active", "ttl"]
    list_filter = ["is_active", "strategy"]
    search_fields = ["name", "table_name", "key_pattern"]
    readonly_fields = ["name", "table_name", "key_pattern", "rule_file", "created_at", "updated_at", "updated_by"]
    fields = ["name", "table_name", "key_pattern", "is_active", "ttl", "strategy", "rule_file", "updated_at", "updated_by"]

    def has_add_permission(self, request):
        return False  # rows come from the rule files

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        # Record who and when, as the worker's API does; only the columns operators own.
        from django.utils import timezone

        obj.updated_at = timezone.now()
        obj.updated_by = f"django-admin:{request.user.get_username()}"
        obj.save(update_fields=["is_active", "ttl", "strategy", "updated_at", "updated_by"])


@admin.register(CacheInvalidation)
class CacheInvalidationAdmin(ReadOnly):
    list_display = ["triggered_at", "key_pattern", "kind", "key_count", "rule_name", "status", "reason", "completed_at"]
    list_filter = ["status", "kind", ("triggered_at", admin.DateFieldListFilter)]
    search_fields = ["key_pattern", "rule_name", "reason"]
    date_hierarchy = "triggered_at"


@admin.register(CacheMetric)
class CacheMetricAdmin(ReadOnly):
    list_display = ["timestamp", "config", "hit_count", "miss_count", "eviction_count", "memory_usage", "key_count", "key_count_error"]
    list_filter = [("timestamp", admin.DateFieldListFilter)]
    list_select_related = ["config"]
