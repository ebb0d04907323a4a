"""Board definitions: which events a board takes and how it ranks them.

Definitions live in PostgreSQL (see ``shared.board_store``); ``deploy/boards.toml``
contains the default set with one ``[[board]]`` table per board. Scores are kept in
sorted sets as integers scaled by ``10**decimals`` and negated for
lower-is-better boards, so every board ranks by descending sorted-set score and
sums of decimals stay exact.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from cronsim import CronSim, CronSimError

from shared.schema import MAX_EXACT_INTEGER, field_error_from_validation


class Operator(enum.Enum):
    """Rule that combines an athlete's events into one score."""

    SUM = "sum"
    BEST = "best"
    LATEST = "latest"
    COUNT = "count"


class Order(enum.Enum):
    """Ranking direction: whether higher or lower scores come first."""

    HIGHER = "higher"
    LOWER = "lower"


class Reset(enum.Enum):
    """When a board starts a new period; ``CRON`` boards carry the expression in ``cron``."""

    NEVER = "never"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    CRON = "cron"


class WeekStart(enum.Enum):
    MONDAY = "monday"
    SUNDAY = "sunday"


class Scope(enum.Enum):
    """``global``: one ranking per period; ``group``: one ranking per value of the event's ``groups``."""

    GLOBAL = "global"
    GROUP = "group"


class Tie(enum.Enum):
    """``shared``: equal scores share a rank; ``first``: who reached the score first ranks higher."""

    SHARED = "shared"
    FIRST = "first"


class BoardError(ValueError):
    """A board definition is invalid, or a value cannot be ranked on a board."""


BoardId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")]

DEFAULT_LATE_GRACE_S = 3600
DEFAULT_RETENTION_S = 30 * 24 * 3600
# Fields that decide which events count and how they rank. Once a board has
# scores they cannot change, because the stored scores would no longer match.
RANKING_FIELDS = ("metric", "operator", "order", "reset", "cron", "week_start", "timezone", "scope", "tie", "decimals", "late_grace_s")


class Board(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One leaderboard definition."""

    id: BoardId
    metric: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
    operator: Operator
    order: Order = Order.HIGHER
    reset: Reset = Reset.NEVER
    cron: str | None = None
    week_start: WeekStart = WeekStart.MONDAY
    timezone: str = "UTC"
    scope: Scope = Scope.GLOBAL
    tie: Tie = Tie.SHARED
    late_grace_s: Annotated[int, msgspec.Meta(ge=0, le=31 * 24 * 3600)] = DEFAULT_LATE_GRACE_S
    retention_s: Annotated[int, msgspec.Meta(ge=60, le=10 * 366 * 24 * 3600)] = DEFAULT_RETENTION_S
    title: Annotated[str, msgspec.Meta(max_length=200)] = ""
    unit: Annotated[str, msgspec.Meta(max_length=32)] = ""
    decimals: Annotated[int, msgspec.Meta(ge=0, le=6)] = 0

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {self.timezone!r} is not an IANA time zone name such as 'Europe/Berlin'") from None
        if (self.reset is Reset.CRON) != (self.cron is not None):
            raise ValueError("cron is set exactly when reset is a cron expression, such as reset = '0 6 * * 1'")
        if self.cron is not None:
            try:
                CronSim(self.cron, datetime(2026, 1, 1, tzinfo=timezone.utc))
            except CronSimError as error:
                raise ValueError(f"reset {self.cron!r} is not a valid cron expression ({error}); use five fields such as '0 6 * * 1'") from None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def scale(self) -> int:
        return 10**self.decimals

    @property
    def reset_text(self) -> str:
        """The reset as users write it: a keyword or the cron expression."""
        return self.cron if self.cron is not None else self.reset.value

    def sort_score(self, value: float) -> int:
        """Return the sorted-set score of ``value``: scaled to an integer, negated for lower-is-better.

        Raises BoardError when the scaled value is beyond 2^53, where a sorted-set
        score (a double) can no longer hold every integer exactly.
        """
        scaled = round(value * self.scale) if self.operator is not Operator.COUNT else 1
        if abs(scaled) > MAX_EXACT_INTEGER:
            raise BoardError(f"value {value} scaled by 10^{self.decimals} exceeds 2^53 on board {self.id}; a sorted-set score cannot hold it exactly")
        return scaled if self.order is Order.HIGHER else -scaled

    def display_score(self, sort_score: float) -> float | int:
        """Return the score to show for a sorted-set score."""
        scaled = int(sort_score) if self.order is Order.HIGHER else -int(sort_score)
        if self.decimals == 0 or self.operator is Operator.COUNT:
            return scaled
        return round(scaled / self.scale, self.decimals)


def ranking_id(board_id: str, group: str | None) -> str:
    """Return the name of one ranking: the board id, or ``board/group`` on group boards.

    A ``/`` can appear neither in a board id nor in a group name, so the two parts never mix.
    """
    return board_id if group is None else f"{board_id}/{group}"


def board_document(board: Board) -> dict[str, Any]:
    """Return a definition as the API and ``boards list`` show it, with ``reset`` as written."""
    document = msgspec.to_builtins(board)
    document.pop("cron", None)
    document["reset"] = board.reset_text
    return document


def board_from_document(document: Mapping[str, Any], where: str = "board") -> Board:
    """Build a Board from a TOML or JSON mapping; raise BoardError naming the bad field.

    ``reset`` takes a keyword (never, daily, weekly, monthly) or a five-field
    cron expression.
    """
    if not isinstance(document, Mapping):
        raise BoardError(f"{where}: a board definition must be an object with at least id, metric and operator")
    fields = dict(document)
    reset = fields.get("reset")
    if "cron" in fields:
        raise BoardError(f"{where}.cron: unknown field; write the cron expression in reset, such as reset = '0 6 * * 1'")
    if isinstance(reset, str) and reset not in {kind.value for kind in Reset if kind is not Reset.CRON}:
        fields["reset"] = Reset.CRON.value
        fields["cron"] = reset
    try:
        return msgspec.convert(fields, Board)
    except msgspec.ValidationError as error:
        failure = field_error_from_validation(error)
        location = where if failure.field == "$" else f"{where}.{failure.field}"
        raise BoardError(f"{location}: {failure.reason}") from None


class BoardsFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    board: list[dict[str, Any]] = []


def parse_boards(text: str, source: str = "boards file") -> list[Board]:
    """Parse board definitions from TOML text; raise BoardError naming the bad entry."""
    try:
        parsed = msgspec.toml.decode(text.encode(), type=BoardsFile)
    except msgspec.ValidationError as error:
        raise BoardError(f"{source}: {error}") from None
    except msgspec.DecodeError as error:
        raise BoardError(f"{source}: not valid TOML: {error}") from None
    boards = [board_from_document(entry, f"{source}: board[{index}]") for index, entry in enumerate(parsed.board)]
    seen: set[str] = set()
    for board in boards:
        if board.id in seen:
            raise BoardError(f"{source}: board id {board.id!r} is defined twice; give each board its own id")
        seen.add(board.id)
    return boards


def load_boards(path: Path) -> list[Board]:
    """Read and parse a boards TOML file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BoardError(f"boards file {path} not found; set RANKSTREAM_BOARDS_FILE to a TOML file with [[board]] tables") from None
    return parse_boards(text, str(path))


class BoardRegistry:
    """Boards by id and by metric, for the ingest, ranker and read paths.

    :meth:`replace` swaps the definitions in place, so every holder of the
    registry gets a reload without being handed a new object.
    """

    def __init__(self, boards: Iterable[Board] = ()) -> None:
        self.by_id: dict[str, Board] = {}
        self.by_metric: dict[str, list[Board]] = {}
        self.replace(boards)

    def replace(self, boards: Iterable[Board]) -> None:
        by_id: dict[str, Board] = {}
        by_metric: dict[str, list[Board]] = {}
        for board in boards:
            by_id[board.id] = board
            by_metric.setdefault(board.metric, []).append(board)
        # Update the dicts in place, without an await in between, so code that
        # kept a reference to ``by_id`` or ``by_metric`` gets the new boards and
        # no coroutine reads a half-built registry.
        self.by_id.clear()
        self.by_id.update(by_id)
        self.by_metric.clear()
        self.by_metric.update(by_metric)

    def __iter__(self) -> Iterator[Board]:
        return iter(list(self.by_id.values()))

    def __len__(self) -> int:
        return len(self.by_id)

    def for_metric(self, metric: str) -> list[Board]:
        return self.by_metric.get(metric, [])
