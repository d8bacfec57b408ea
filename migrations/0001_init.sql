-- cachewarden's own tables. Applied by `cachewarden migrate` (and at `run` start), once each,
-- recorded in cachewarden_migrations.

CREATE TABLE IF NOT EXISTS cache_configs (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL UNIQUE,
    table_name  text NOT NULL,
    key_pattern text NOT NULL,
    ttl         integer CHECK (ttl >= 0),
    strategy    text NOT NULL DEFAULT 'invalidate'
                CHECK (strategy IN ('invalidate', 'refresh', 'write-through')),
    is_active   boolean NOT NULL DEFAULT true,
    rule_file   text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS cache_metrics (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- NULL for whole-instance samples (Redis INFO has no per-rule figures).
    config_id      uuid REFERENCES cache_configs (id) ON DELETE CASCADE,
    hit_count      bigint NOT NULL DEFAULT 0 CHECK (hit_count >= 0),
    miss_count     bigint NOT NULL DEFAULT 0 CHECK (miss_count >= 0),
    eviction_count bigint NOT NULL DEFAULT 0 CHECK (eviction_count >= 0),
    memory_usage   bigint NOT NULL DEFAULT 0 CHECK (memory_usage >= 0),
    "timestamp"    timestamptz NOT NULL DEFAULT now(),
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS cache_metrics_config_time_idx ON cache_metrics (config_id, "timestamp" DESC);
CREATE INDEX IF NOT EXISTS cache_metrics_time_idx ON cache_metrics ("timestamp" DESC);

CREATE TABLE IF NOT EXISTS cache_invalidations (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- What was invalidated, prefix included:
    --   kind = 'key'      key_pattern is one exact key
    --   kind = 'pattern'  key_pattern is one Redis glob, SCANned and unlinked
    --   kind = 'keys'     many exact keys from one rule template in one batch: `keys` lists
    --                     them, key_pattern is the glob of their family (e.g. ':1:course:*')
    --   kind = 'patterns' likewise for many patterns
    key_pattern  text NOT NULL,
    kind         text NOT NULL DEFAULT 'pattern'
                 CHECK (kind IN ('key', 'keys', 'pattern', 'patterns')),
    keys         text[],
    key_count    integer NOT NULL DEFAULT 1 CHECK (key_count >= 0),
    reason       text NOT NULL DEFAULT '',
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    rule_name    text,
    source_table text,
    lsn          pg_lsn,
    error        text,
    triggered_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (status <> 'completed' OR completed_at IS NOT NULL),
    CHECK (kind NOT IN ('keys', 'patterns') OR keys IS NOT NULL)
) WITH (fillfactor = 80);
-- Work still open (recovery after a crash; requests inserted by applications).
CREATE INDEX IF NOT EXISTS cache_invalidations_open_idx
    ON cache_invalidations (created_at) WHERE status IN ('pending', 'running');
-- Recent history, newest first.
CREATE INDEX IF NOT EXISTS cache_invalidations_triggered_at_idx ON cache_invalidations (triggered_at DESC);
