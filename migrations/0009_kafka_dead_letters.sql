-- Dead letters of the Kafka source: where the record was, so it can be found (and replayed
-- by hand) in its topic. NULL for the PostgreSQL source's.
ALTER TABLE cache_dead_letters
    ADD COLUMN IF NOT EXISTS kafka_topic text,
    ADD COLUMN IF NOT EXISTS kafka_partition integer,
    ADD COLUMN IF NOT EXISTS kafka_offset bigint;
