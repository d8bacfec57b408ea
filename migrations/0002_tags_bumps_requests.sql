-- Tag sets and namespace bumps get their own journal kinds; application requests
-- (rows inserted with status 'pending' and no rule) are found through a small partial index.

ALTER TABLE cache_invalidations DROP CONSTRAINT IF EXISTS cache_invalidations_kind_check;
ALTER TABLE cache_invalidations ADD CONSTRAINT cache_invalidations_kind_check CHECK (kind IN (
    'key', 'keys', 'pattern', 'patterns',
    'tag', 'tags', 'tag-pattern', 'tag-patterns',
    'bump', 'bumps', 'bump-pattern', 'bump-patterns'));

ALTER TABLE cache_invalidations DROP CONSTRAINT IF EXISTS cache_invalidations_check1;
ALTER TABLE cache_invalidations ADD CONSTRAINT cache_invalidations_members_check
    CHECK (kind NOT IN ('keys', 'patterns', 'tags', 'tag-patterns', 'bumps', 'bump-patterns')
           OR keys IS NOT NULL);

CREATE INDEX IF NOT EXISTS cache_invalidations_requests_idx
    ON cache_invalidations (created_at) WHERE status = 'pending' AND rule_name IS NULL;
