"""Board definitions: which events a board takes and how it ranks them.

Definitions load from a TOML file (``deploy/boards.toml`` by default) with one
``[[board]]`` table per board. Scores are kept in sorted sets as integers
scaled by ``10**decimals`` and negated for lower-is-better boards, so every
board ranks by descending sorted-set score and sums of decimals stay exact.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from shared.schema import MAX_EXACT_INTEGER


class Operator(enum.Enum):
    """How a board combines an athlete's events into one score."""

    SUM = "sum"
    BEST = "best"
    LATEST = "latest"
    COUNT = "count"


class Order(enum.Enum):
    """Which scores rank first."""

    HIGHER = "higher"
    LOWER = "lower"


class Reset(enum.Enum):
    """When a board starts a new period."""

    NEVER = "never"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"


class BoardError(ValueError):
    """A board definition is invalid."""


BoardId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")]


class Board(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One leaderboard definition."""

    id: BoardId
    metric: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
    operator: Operator
    order: Order = Order.HIGHER
    reset: Reset = Reset.NEVER
    timezone: str = "UTC"
    title: str = ""
    unit: str = ""
    decimals: Annotated[int, msgspec.Meta(ge=0, le=6)] = 0

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {self.timezone!r} is not an IANA time zone name such as 'Europe/Berlin'") from None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def scale(self) -> int:
        return 10**self.decimals

    def sort_score(self, value: float) -> int:
        """Return the sorted-set score of ``value``: scaled to an integer, negated for lower-is-better."""
        scaled = round(value * self.scale) if self.operator is not Operator.COUNT else 1
        if abs(scaled) > MAX_EXACT_INTEGER:
            raise BoardError(f"value {value} scaled by 10^{self.decimals} exceeds 2^53 on board {self.id}")
        return scaled if self.order is Order.HIGHER else -scaled

    def display_score(self, sort_score: float) -> float | int:
        """Return the score to show for a sorted-set score."""
        scaled = int(sort_score) if self.order is Order.HIGHER else -int(sort_score)
        if self.decimals == 0 or self.operator is Operator.COUNT:
            return scaled
        return round(scaled / self.scale, self.decimals)


class BoardsFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    board: list[Board] = []


_ERROR_AT = re.compile(r" - at `\$\.board\[(\d+)\](.*)`$")


def parse_boards(text: str, source: str = "boards file") -> list[Board]:
    """Parse board definitions from TOML text; raise BoardError naming the bad entry."""
    try:
        parsed = msgspec.toml.decode(text.encode(), type=BoardsFile)
    except msgspec.ValidationError as error:
        raise BoardError(f"{source}: {error}") from None
    except msgspec.DecodeError as error:
        raise BoardError(f"{source}: not valid TOML: {error}") from None
    seen: set[str] = set()
    for board in parsed.board:
        if board.id in seen:
            raise BoardError(f"{source}: board id {board.id!r} is defined twice; give each board its own id")
        seen.add(board.id)
    return parsed.board


def load_boards(path: Path) -> list[Board]:
    """Read and parse a boards TOML file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BoardError(f"boards file {path} not found; set RANKSTREAM_BOARDS_FILE to a TOML file with [[board]] tables") from None
    return parse_boards(text, str(path))


class BoardRegistry:
    """Boards by id and by metric, for the ingest, ranker and read paths."""

    def __init__(self, boards: Iterable[Board]) -> None:
        self.by_id: dict[str, Board] = {}
        self.by_metric: dict[str, list[Board]] = {}
        for board in boards:
            self.by_id[board.id] = board
            self.by_metric.setdefault(board.metric, []).append(board)

    def __iter__(self):
        return iter(self.by_id.values())

    def for_metric(self, metric: str) -> list[Board]:
        return self.by_metric.get(metric, [])
