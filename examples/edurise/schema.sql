-- An EduRise-like learning platform schema (the tables a Django app would create), used by the
-- example rules in rules/ and by `scripts/run-local.sh`. Idempotent.

CREATE TABLE IF NOT EXISTS users (
    id         bigserial PRIMARY KEY,
    email      text NOT NULL UNIQUE,
    username   text NOT NULL UNIQUE,
    full_name  text NOT NULL DEFAULT '',
    is_active  boolean NOT NULL DEFAULT true,
    last_login timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS courses (
    id            bigserial PRIMARY KEY,
    slug          text NOT NULL UNIQUE,
    title         text NOT NULL,
    description   text NOT NULL DEFAULT '',
    price         numeric(10, 2) NOT NULL DEFAULT 0,
    instructor_id bigint REFERENCES users (id),
    published     boolean NOT NULL DEFAULT false,
    view_count    bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS lessons (
    id         bigserial PRIMARY KEY,
    course_id  bigint NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    slug       text NOT NULL,
    title      text NOT NULL,
    body       text NOT NULL DEFAULT '',
    position   integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (course_id, slug)
);

CREATE TABLE IF NOT EXISTS enrollments (
    id         bigserial PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    course_id  bigint NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    status     text NOT NULL DEFAULT 'active',
    progress   numeric(5, 2) NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, course_id)
);

-- Rules read old-row values ({old.slug}, {old.course_id}, ...), which the WAL carries only
-- with REPLICA IDENTITY FULL. `cachewarden check` tells you when a table needs this.
ALTER TABLE users REPLICA IDENTITY FULL;
ALTER TABLE courses REPLICA IDENTITY FULL;
ALTER TABLE lessons REPLICA IDENTITY FULL;
ALTER TABLE enrollments REPLICA IDENTITY FULL;
