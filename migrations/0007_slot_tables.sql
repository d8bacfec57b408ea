-- The identities (OIDs) of the tables a slot's rules name, recorded with its rules, so that a
-- new start recognizes a rule's table renamed while no worker was running (its changes in the
-- backlog arrive under the new name and must still reach the rules).
ALTER TABLE cachewarden_slots ADD COLUMN IF NOT EXISTS tables jsonb NOT NULL DEFAULT '{}';
