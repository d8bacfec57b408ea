-- Open work — application requests, delayed passes, rows a crash left open — is found through a
-- small table of its own, kept by triggers, so that no index of cache_invalidations reads a
-- column its lifecycle changes (status, completed_at, error): every later update of a journal
-- row can be a HOT update (fillfactor 80 leaves it room). The stream's rows are inserted
-- already final and never enter the queue.
CREATE TABLE IF NOT EXISTS cache_invalidation_queue (
    id      uuid PRIMARY KEY,
    -- when the row may run: due_at for a delayed pass, created_at otherwise
    due_at  timestamptz NOT NULL,
    -- an application's request (no rule), as the request poller claims them
    request boolean NOT NULL
);

CREATE OR REPLACE FUNCTION cache_invalidations_queue_sync() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IN ('pending', 'running', 'scheduled') THEN
        INSERT INTO cache_invalidation_queue (id, due_at, request)
        VALUES (NEW.id, coalesce(NEW.due_at, NEW.created_at), NEW.rule_name IS NULL)
        ON CONFLICT (id) DO UPDATE SET due_at = EXCLUDED.due_at;
    ELSE
        DELETE FROM cache_invalidation_queue WHERE id = NEW.id;
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS cache_invalidations_enqueue ON cache_invalidations;
CREATE TRIGGER cache_invalidations_enqueue AFTER INSERT ON cache_invalidations
    FOR EACH ROW WHEN (NEW.status IN ('pending', 'running', 'scheduled'))
    EXECUTE FUNCTION cache_invalidations_queue_sync();
DROP TRIGGER IF EXISTS cache_invalidations_requeue ON cache_invalidations;
CREATE TRIGGER cache_invalidations_requeue AFTER UPDATE OF status ON cache_invalidations
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION cache_invalidations_queue_sync();
DROP TRIGGER IF EXISTS cache_invalidations_dequeue ON cache_invalidations;
CREATE OR REPLACE FUNCTION cache_invalidations_queue_drop() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM cache_invalidation_queue WHERE id = OLD.id;
    RETURN NULL;
END $$;
CREATE TRIGGER cache_invalidations_dequeue AFTER DELETE ON cache_invalidations
    FOR EACH ROW EXECUTE FUNCTION cache_invalidations_queue_drop();

INSERT INTO cache_invalidation_queue (id, due_at, request)
SELECT id, coalesce(due_at, created_at), rule_name IS NULL FROM cache_invalidations
WHERE status IN ('pending', 'running', 'scheduled')
ON CONFLICT (id) DO NOTHING;

DROP INDEX IF EXISTS cache_invalidations_open_idx;
DROP INDEX IF EXISTS cache_invalidations_requests_idx;
DROP INDEX IF EXISTS cache_invalidations_scheduled_idx;
