-- Board definitions. ``definition`` is the board as JSON (see shared/boards.py);
-- ``version`` comes from one sequence and changes on every write, so services
-- poll max(version) to notice a change within seconds.
CREATE SEQUENCE board_versions;

CREATE TABLE boards (
    id         text PRIMARY KEY,
    definition jsonb NOT NULL,
    version    bigint NOT NULL DEFAULT nextval('board_versions'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Final standings of closed periods. ``group_key`` is '' on global boards.
-- ``sort_score`` is the scaled, order-adjusted integer the sorted set held;
-- ``reached_ms`` is when the athlete reached that score, for tie policy 'first'.
CREATE TABLE board_results (
    board_id     text NOT NULL,
    group_key    text NOT NULL DEFAULT '',
    period       text NOT NULL,
    user_id      text NOT NULL,
    sort_score   bigint NOT NULL,
    reached_ms   bigint NOT NULL,
    display_name text,
    PRIMARY KEY (board_id, group_key, period, user_id)
);

-- One row per archived period: written in the same transaction as its results.
CREATE TABLE board_periods (
    board_id     text NOT NULL,
    group_key    text NOT NULL DEFAULT '',
    period       text NOT NULL,
    participants integer NOT NULL,
    finalized_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (board_id, group_key, period)
);

-- Athletes hidden from every board. ``source`` is 'operator' (banned, staff or
-- test accounts) or 'athlete' (opted out); an athlete is hidden while any row exists.
CREATE TABLE hidden_athletes (
    user_id   text NOT NULL,
    source    text NOT NULL CHECK (source IN ('operator', 'athlete')),
    reason    text NOT NULL DEFAULT '',
    hidden_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, source)
);
