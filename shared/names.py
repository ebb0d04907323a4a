"""Every Redis key, stream, consumer group and channel name Rankstream uses.

Keys that one command or script touches together share a hash tag (the part in
braces), so the layout works unchanged on Redis Cluster:

- ``{ns}:{events}:stream`` is the events stream; ``{ns}:{events}:seen:<event_id>``
  contains the body hash of an accepted event for de-duplication, and
  ``{ns}:{events}:dead`` is the dead-letter stream. Ingest appends and records
  in one script, so these share the ``{events}`` tag.
- ``{ns}:{events}:failed:<group>`` maps the stream id of an entry whose handler
  failed to the last error, until the entry is acknowledged or dead-lettered.
  A consumer acknowledges, dead-letters and clears it in one transaction, so it
  shares the ``{events}`` tag.
- ``{ns}:{board:<board>:<period>}:scores`` is a board period's sorted set,
  ``...:applied`` the event ids already applied to it, ``...:seq`` its update
  sequence number and ``...:latest_at`` the time of each athlete's latest value.
  The ranker's apply script touches only these, so they share one tag.
  ``...:reached`` and ``...:order`` serve tie policy ``first``, ``...:close-mark``
  is the stream id a closing period waits for, and ``...:rebuild:<part>`` are
  the keys a rebuild fills before it renames them over the live ones.
  ``<board>`` is ``board/group`` on group boards.
- ``{ns}:periods:closing`` is a sorted set of board periods by the ms instant
  their late grace ends, which the ranker's period closer follows.
- ``{ns}:users:hidden`` is the set of athletes hidden from every board.
- ``{ns}:users:names`` maps user id to display name.
- ``{ns}:{events}:ratelimit:<subject>`` is one token bucket: of an API key
  (subject ``key:<id>``) or of the failed authentications of a client address
  (``authfail:<address>``). The append script takes a request's token and
  appends its events in one call, so buckets share the ``{events}`` tag.
- ``{ns}:rank-changes`` is the pub/sub channel of rank changes.
- ``{ns}:boards:built`` marks that the boards hold every persisted event, and
  ``{ns}:boards:rebuild-lock`` names the ranker rebuilding them after a loss.

The namespace ``ns`` (``RANKSTREAM_NAMESPACE``, default ``rs``) lets several
deployments or test runs share one server without seeing each other's keys.
"""

from __future__ import annotations

from dataclasses import dataclass

RANKER_GROUP = "ranker"
PERSISTER_GROUP = "persister"
CONSUMER_GROUPS = (RANKER_GROUP, PERSISTER_GROUP)

# Tables in PostgreSQL.
EVENTS_TABLE = "events"
API_KEYS_TABLE = "api_keys"
BOARDS_TABLE = "boards"
BOARD_RESULTS_TABLE = "board_results"
BOARD_PERIODS_TABLE = "board_periods"
HIDDEN_ATHLETES_TABLE = "hidden_athletes"
AUDIT_LOG_TABLE = "audit_log"


@dataclass(frozen=True)
class Names:
    """Key, stream and channel names under one namespace."""

    namespace: str = "rs"

    @property
    def events_stream(self) -> str:
        return f"{self.namespace}:{{events}}:stream"

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.namespace}:{{events}}:dead"

    def seen_event(self, event_id: str) -> str:
        return f"{self.namespace}:{{events}}:seen:{event_id}"

    def failed_entries(self, group: str) -> str:
        return f"{self.namespace}:{{events}}:failed:{group}"

    def rate_limit_bucket(self, subject: str) -> str:
        return f"{self.namespace}:{{events}}:ratelimit:{subject}"

    @property
    def rank_changes_channel(self) -> str:
        return f"{self.namespace}:rank-changes"

    @property
    def display_names(self) -> str:
        return f"{self.namespace}:users:names"

    def board_tag(self, board: str, period: str) -> str:
        return f"{self.namespace}:{{board:{board}:{period}}}"

    def board_scores(self, board: str, period: str) -> str:
        return f"{self.board_tag(board, period)}:scores"

    def board_applied(self, board: str, period: str) -> str:
        return f"{self.board_tag(board, period)}:applied"

    def board_seq(self, board: str, period: str) -> str:
        return f"{self.board_tag(board, period)}:seq"

    def board_latest_at(self, board: str, period: str) -> str:
        return f"{self.board_tag(board, period)}:latest_at"

    def board_reached(self, board: str, period: str) -> str:
        return f"{self.board_tag(board, period)}:reached"

    def board_order(self, board: str, period: str) -> str:
        return f"{self.board_tag(board, period)}:order"

    def board_close_mark(self, board: str, period: str) -> str:
        return f"{self.board_tag(board, period)}:close-mark"

    def board_rebuild(self, board: str, period: str, part: str) -> str:
        return f"{self.board_tag(board, period)}:rebuild:{part}"

    @property
    def closing_periods(self) -> str:
        return f"{self.namespace}:periods:closing"

    @property
    def hidden_users(self) -> str:
        return f"{self.namespace}:users:hidden"

    @property
    def boards_built(self) -> str:
        """Marker set once the boards hold every persisted event; its absence means Redis lost its data."""
        return f"{self.namespace}:boards:built"

    @property
    def rebuild_lock(self) -> str:
        return f"{self.namespace}:boards:rebuild-lock"
