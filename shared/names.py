"""Every Redis key, stream, consumer group and channel name Rankstream uses.

Keys that one command or script touches together share a hash tag (the part in
braces), so the layout works unchanged on Redis Cluster:

- ``{ns}:{events}:stream`` is the events stream; ``{ns}:{events}:seen:<event_id>``
  holds the body hash of an accepted event for de-duplication, and
  ``{ns}:{events}:dead`` is the dead-letter stream. Ingest appends and records
  in one script, so these share the ``{events}`` tag.
- ``{ns}:{board:<board>:<period>}:scores`` is a board period's sorted set,
  ``...:applied`` the event ids already applied to it, ``...:seq`` its update
  sequence number and ``...:latest_at`` the time of each athlete's latest value.
  The ranker's apply script touches only these, so they share one tag.
- ``{ns}:users:names`` maps user id to display name.
- ``{ns}:ratelimit:<subject>`` is the token bucket of one API key (subject
  ``key:<id>``), touched only by the ingest rate-limit script.
- ``{ns}:rank-changes`` is the pub/sub channel of rank changes.

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

    def rate_limit_bucket(self, subject: str) -> str:
        return f"{self.namespace}:ratelimit:{subject}"

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
