-- Bulk warming progress, so `cachewarden warm` resumes where an interrupted run stopped.
CREATE TABLE IF NOT EXISTS cachewarden_warm_runs (
    rule_name   text NOT NULL,
    where_sql   text NOT NULL DEFAULT '',
    last_key    text[],
    done        bigint NOT NULL DEFAULT 0 CHECK (done >= 0),
    total       bigint NOT NULL DEFAULT 0 CHECK (total >= 0),
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (rule_name, where_sql)
);
