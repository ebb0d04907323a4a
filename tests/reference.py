"""Reference standings computed in PostgreSQL with window functions over the persisted events.

Independent of the Lua apply script: periods come from SQL date functions in
the board's time zone, scores from aggregates, ranks from ``rank()`` (tie
policy shared) or ``row_number()`` (tie policy first). Cron boards are not
covered.
"""

from __future__ import annotations

import asyncpg

from shared.boards import Board, Operator, Order, Reset, Scope, Tie, WeekStart

Standings = dict[tuple[str | None, str], list[tuple[int, str, float | int]]]


def _local_period_sql(board: Board) -> tuple[str, str]:
    """Return SQL for the period id and the period's end, over ``local`` (occurred_at in the board's zone)."""
    zone = board.timezone.replace("'", "''")
    if board.reset is Reset.DAILY:
        return "to_char(local, 'YYYY-MM-DD')", f"((date_trunc('day', local) + interval '1 day') AT TIME ZONE '{zone}')"
    if board.reset is Reset.MONTHLY:
        return "to_char(local, 'YYYY-MM')", f"((date_trunc('month', local) + interval '1 month') AT TIME ZONE '{zone}')"
    if board.reset is Reset.WEEKLY:
        shift = "interval '1 day'" if board.week_start is WeekStart.SUNDAY else "interval '0 day'"
        return (
            f"to_char(local + {shift}, 'IYYY-\"W\"IW')",
            f"((date_trunc('week', local + {shift}) - {shift} + interval '7 days') AT TIME ZONE '{zone}')",
        )
    return "'all'", "NULL::timestamptz"


def reference_query(board: Board) -> str:
    zone = board.timezone.replace("'", "''")
    period_sql, end_sql = _local_period_sql(board)
    sign = "1" if board.order is Order.HIGHER else "-1"
    scaled = "1" if board.operator is Operator.COUNT else f"round(value * {board.scale})::bigint"
    group_sql = "g.grp" if board.scope is Scope.GROUP else "NULL::text"
    group_join = "CROSS JOIN LATERAL (SELECT DISTINCT unnest(e.groups) AS grp) g" if board.scope is Scope.GROUP else ""
    occurred_ms = "(extract(epoch FROM date_trunc('milliseconds', occurred_at)) * 1000)::bigint"
    if board.operator in (Operator.SUM, Operator.COUNT):
        score = f"sum({sign} * scaled)"
        reached = f"max({occurred_ms})"
    elif board.operator is Operator.BEST:
        score = f"max({sign} * scaled)"
        reached = None
    else:
        score = f"(array_agg({sign} * scaled ORDER BY {occurred_ms} DESC, event_id COLLATE \"C\" DESC))[1]"
        reached = f"max({occurred_ms})"
    if reached is None:
        # best: the earliest event whose value equals the athlete's best.
        reached_sql = f"""(SELECT min({occurred_ms}) FROM counted c
             WHERE c.user_id = s.user_id AND c.period = s.period AND c.grp IS NOT DISTINCT FROM s.grp
               AND {sign} * c.scaled = s.score)"""
    else:
        reached_sql = "s.reached_agg"
    if board.tie is Tie.FIRST:
        rank = 'row_number() OVER (PARTITION BY grp, period ORDER BY score DESC, reached, user_id COLLATE "C")'
        listing = "score DESC, rank"
    else:
        rank = "rank() OVER (PARTITION BY grp, period ORDER BY score DESC)"
        listing = 'score DESC, user_id COLLATE "C" DESC'
    return f"""
        WITH placed AS (
            SELECT e.*, {group_sql} AS grp, (e.occurred_at AT TIME ZONE '{zone}') AS local, {scaled} AS scaled
            FROM events e {group_join}
            WHERE e.metric = $1
        ),
        counted AS (
            SELECT *, {period_sql} AS period FROM placed
            WHERE {end_sql} IS NULL OR received_at <= {end_sql} + make_interval(secs => {board.late_grace_s})
        ),
        scored AS (
            SELECT grp, period, user_id, {score} AS score, {reached or 'NULL::bigint'} AS reached_agg
            FROM counted GROUP BY grp, period, user_id
        ),
        visible AS (
            SELECT s.grp, s.period, s.user_id, s.score, {reached_sql} AS reached FROM scored s
            WHERE NOT EXISTS (SELECT 1 FROM hidden_athletes h WHERE h.user_id = s.user_id)
        )
        SELECT grp, period, user_id, score, {rank} AS rank
        FROM visible
        ORDER BY grp, period, {listing}
    """


async def reference_standings(connection: asyncpg.Connection, board: Board) -> Standings:
    """Return every ranking period of ``board`` as lists of (rank, user, score) in listing order."""
    standings: Standings = {}
    for row in await connection.fetch(reference_query(board), board.metric):
        standings.setdefault((row["grp"], row["period"]), []).append((row["rank"], row["user_id"], board.display_score(row["score"])))
    return standings
