-- Delayed second invalidations (`reinvalidate_after`) are journaled when their batch is done,
-- as rows with status 'scheduled' and the time they fall due, so a crash or a restart does not
-- lose them; a worker claims them when due and runs them through the usual lifecycle.
ALTER TABLE cache_invalidations ADD COLUMN IF NOT EXISTS due_at timestamptz;
ALTER TABLE cache_invalidations DROP CONSTRAINT IF EXISTS cache_invalidations_status_check;
ALTER TABLE cache_invalidations ADD CONSTRAINT cache_invalidations_status_check
    CHECK (status IN ('scheduled', 'pending', 'running', 'completed', 'failed'));
ALTER TABLE cache_invalidations DROP CONSTRAINT IF EXISTS cache_invalidations_due_check;
ALTER TABLE cache_invalidations ADD CONSTRAINT cache_invalidations_due_check
    CHECK (status <> 'scheduled' OR due_at IS NOT NULL);
CREATE INDEX IF NOT EXISTS cache_invalidations_scheduled_idx
    ON cache_invalidations (due_at) WHERE status = 'scheduled';
