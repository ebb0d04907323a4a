-- Who did what to keys and other administered state. Rows never hold a key's
-- text or hash: keys appear by id only.
CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    action      text NOT NULL,
    target      text,
    outcome     text NOT NULL CHECK (outcome IN ('ok', 'allowed', 'denied', 'not_found', 'invalid')),
    details     jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_log_occurred_at ON audit_log (occurred_at);
