-- Input a source could not understand (an undecodable pgoutput message outside a transaction,
-- later an undecodable Kafka event): kept here, answered by a conservative invalidation, and
-- never a reason to stop or replay forever.
CREATE TABLE IF NOT EXISTS cache_dead_letters (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source      text NOT NULL,
    position    text NOT NULL,
    payload     bytea NOT NULL,
    error       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS cache_dead_letters_created_idx ON cache_dead_letters (created_at DESC);
