-- The rule files each slot's active instance runs, recorded at start and at every reload, so
-- that a new instance (a rolling deploy, a takeover) plans the backlog it inherits with the
-- rules that were live when those changes were committed.
CREATE TABLE IF NOT EXISTS cachewarden_slots (
    slot        text PRIMARY KEY,
    rules       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
