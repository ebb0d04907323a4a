"""The apply script's keys and arguments, shared by the ranker and the rebuild."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources

from shared.boards import Board, ranking_id
from shared.names import Names
from shared.schema import BoardUpdate, RankChange

APPLY_SCRIPT = resources.files("services.ranker").joinpath("apply.lua").read_text(encoding="utf-8")

# Applied event ids are remembered this long, far beyond any redelivery of a
# pending entry (claims happen after seconds; dead-lettering after a few tries).
APPLIED_RETENTION_MS = 7 * 24 * 3600 * 1000

# Added to ms since the epoch so instants back to the year -1200 encode as
# positive 16-digit strings that sort like numbers.
OCCURRED_OFFSET_MS = 10**14
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# Ends each event field in the apply script's events argument; ids may not contain control characters.
FIELD_END = "\x1f"

KEY_PARTS = ("scores", "applied", "seq", "latest_at", "reached", "order")


def epoch_ms(instant: datetime) -> int:
    """Return whole milliseconds since the epoch, computed without float rounding."""
    delta = instant - _EPOCH
    return (delta.days * 86_400_000) + (delta.seconds * 1000) + delta.microseconds // 1000


def occurred_key(instant: datetime) -> str:
    return f"{epoch_ms(instant) + OCCURRED_OFFSET_MS:016d}"


@dataclass
class PeriodBatch:
    """The events of one batch that go to one ranking period, as script arguments."""

    board: Board
    group: str | None
    period: str
    args: list[str] = field(default_factory=list)

    @property
    def ranking(self) -> str:
        return ranking_id(self.board.id, self.group)

    def add(self, event_id: str, user_id: str, sort_score: int, occurred_at: datetime) -> None:
        self.args.extend([event_id, user_id, str(sort_score), occurred_key(occurred_at)])


def live_keys(names: Names, ranking: str, period: str) -> list[str]:
    return [
        names.board_scores(ranking, period),
        names.board_applied(ranking, period),
        names.board_seq(ranking, period),
        names.board_latest_at(ranking, period),
        names.board_reached(ranking, period),
        names.board_order(ranking, period),
    ]


def rebuild_keys(names: Names, ranking: str, period: str) -> list[str]:
    return [names.board_rebuild(ranking, period, part) for part in KEY_PARTS]


def pack_events(event_args: list[str]) -> str:
    """Join event fields into the apply script's one events argument, each field followed by FIELD_END.

    Raises ValueError when a field contains FIELD_END, because the script would then split the events wrongly.
    """
    packed = FIELD_END.join(event_args) + FIELD_END if event_args else ""
    if packed.count(FIELD_END) != len(event_args):
        field = next(value for value in event_args if FIELD_END in value)
        raise ValueError(f"event field {field!r} contains the byte 0x1F, which no valid event id or user id contains")
    return packed


def script_args(board: Board, now_ms: int, hidden: list[str], event_args: list[str]) -> list[str]:
    return [board.operator.value, str(now_ms), str(APPLIED_RETENTION_MS), board.tie.value, str(len(hidden)), *hidden, pack_events(event_args)]


def parse_changes(board: Board, group: str | None, period: str, reply: list) -> BoardUpdate | None:
    """Turn the apply script's reply into a BoardUpdate, or None when nothing changed."""
    if not reply:
        return None
    seq = int(reply[0])
    changes = []
    for i in range(1, len(reply), 5):
        user, old_score, new_score, old_rank, new_rank = reply[i : i + 5]
        changes.append(
            RankChange(
                user_id=user.decode(),
                score=board.display_score(float(new_score)),
                rank=int(new_rank),
                old_score=None if old_score is None else board.display_score(float(old_score)),
                old_rank=None if old_rank is None else int(old_rank),
            )
        )
    return BoardUpdate(board=board.id, period=period, seq=seq, changes=changes, group=group)
