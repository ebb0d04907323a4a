-- Accepted score events, stored once each; event_id is the idempotency key.
CREATE TABLE events (
    event_id     text PRIMARY KEY,
    user_id      text NOT NULL,
    metric       text NOT NULL,
    value        double precision NOT NULL,
    occurred_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    display_name text,
    groups       text[] NOT NULL DEFAULT '{}',
    stream_id    text NOT NULL,
    persisted_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX events_metric_occurred_at ON events (metric, occurred_at);
CREATE INDEX events_user_id ON events (user_id);

-- API keys are stored only as SHA-256 hashes of the key text.
CREATE TABLE api_keys (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL,
    kind       text NOT NULL DEFAULT 'server' CHECK (kind IN ('device', 'server', 'admin')),
    user_id    text,
    key_hash   bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz,
    CHECK ((kind = 'device') = (user_id IS NOT NULL))
);
