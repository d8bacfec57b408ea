-- Per-rule cache_metrics rows (issue 16): the rule family's key count, sampled with SCAN,
-- and its standard error (0 when the scan covered the whole keyspace). A figure that cannot
-- be measured is NULL rather than 0: per-rule hits are invisible outside the application, and
-- a whole-instance delta across a Redis restart is not exact.
ALTER TABLE cache_metrics
    ADD COLUMN IF NOT EXISTS key_count bigint CHECK (key_count >= 0),
    ADD COLUMN IF NOT EXISTS key_count_error double precision CHECK (key_count_error >= 0),
    ALTER COLUMN hit_count DROP NOT NULL,
    ALTER COLUMN miss_count DROP NOT NULL,
    ALTER COLUMN eviction_count DROP NOT NULL,
    ALTER COLUMN memory_usage DROP NOT NULL;
