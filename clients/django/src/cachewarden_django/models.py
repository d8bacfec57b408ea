"""cachewarden's tables as unmanaged models (``cachewarden migrate`` owns their schema; Django
never creates or alters them)."""

from django.db import models


class CacheConfig(models.Model):
    """One rule (``cache_configs``). ``is_active = False`` switches the rule off within one
    control interval; ``ttl`` and ``strategy`` edits are reported as drift from the rule file,
    which stays the source of truth."""

    STRATEGIES = [("invalidate", "invalidate"), ("refresh", "refresh"), ("write-through", "write-through")]

    id = models.UUIDField(primary_key=True, editable=False)
    name = models.TextField(unique=True, editable=False)
    table_name = models.TextField(editable=False)
    key_pattern = models.TextField(editable=False)
    ttl = models.IntegerField(null=True, blank=True, help_text="seconds")
    strategy = models.TextField(choices=STRATEGIES, default="invalidate")
    is_active = models.BooleanField(default=True)
    rule_file = models.TextField(null=True, editable=False)
    created_at = models.DateTimeField(editable=False)
    updated_at = models.DateTimeField(editable=False)
    updated_by = models.TextField(null=True, blank=True, editable=False)

    class Meta:
        managed = False
        db_table = "cache_configs"
        ordering = ["name"]
        verbose_name = "cache rule"

    def __str__(self):
        return self.name


class CacheInvalidation(models.Model):
    """One invalidation (``cache_invalidations``): read-only history."""

    STATUSES = [("pending", "pending"), ("running", "running"), ("completed", "completed"), ("failed", "failed"), ("scheduled", "scheduled")]

    id = models.UUIDField(primary_key=True)
    key_pattern = models.TextField()
    kind = models.TextField()
    keys = models.TextField(null=True)  # text[]; shown as text
    key_count = models.IntegerField()
    reason = models.TextField()
    status = models.TextField(choices=STATUSES)
    rule_name = models.TextField(null=True)
    source_table = models.TextField(null=True)
    error = models.TextField(null=True)
    triggered_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True)
    created_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = "cache_invalidations"
        ordering = ["-triggered_at"]
        verbose_name = "cache invalidation"

    def __str__(self):
        return f"{self.key_pattern} ({self.status})"


class CacheMetric(models.Model):
    """One ``cache_metrics`` sample: the whole instance (no rule) or one rule's family."""

    id = models.UUIDField(primary_key=True)
    config = models.ForeignKey(CacheConfig, null=True, on_delete=models.DO_NOTHING, db_column="config_id", related_name="metrics")
    hit_count = models.BigIntegerField(null=True)
    miss_count = models.BigIntegerField(null=True)
    eviction_count = models.BigIntegerField(null=True)
    memory_usage = models.BigIntegerField(null=True)
    key_count = models.BigIntegerField(null=True)
    key_count_error = models.FloatField(null=True)
    timestamp = models.DateTimeField()
    created_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = "cache_metrics"
        ordering = ["-timestamp"]
        verbose_name = "cache metric"

    def __str__(self):
        return f"{self.config or 'instance'} at {self.timestamp:%Y-%m-%d %H:%M}"
