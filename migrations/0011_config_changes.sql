-- Who changed a rule's cache_configs row last (issue 18): the operator API records the caller
-- with each change (`updated_at` says when). NULL for rows only the worker's rule sync wrote.
ALTER TABLE cache_configs ADD COLUMN IF NOT EXISTS updated_by text;
