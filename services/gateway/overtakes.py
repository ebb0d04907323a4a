"""Who passed the followed athlete, and whom they passed, between two pushes. No I/O here.

Seen from the followed athlete A: A ``passed`` B when B was ahead of or level with
A before and is strictly behind A now. A was ``passed_by`` B when B was behind or
level before and is strictly ahead now. An athlete without a score is behind
everyone. Moving into a tie is not an overtake.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from shared.boards import Board, Operator, Order

# Maximum athletes named per direction in one overtake message; the rest are counted.
MAX_NAMED = 20

Score = float | int


@dataclass
class Overtakes:
    """The athletes the followed one passed and was passed by, at most MAX_NAMED each, and its ranks."""

    passed: list[str] = field(default_factory=list)
    passed_by: list[str] = field(default_factory=list)
    more: int = 0
    old_rank: int | None = None
    new_rank: int | None = None

    def __bool__(self) -> bool:
        return bool(self.passed or self.passed_by)

    def add(self, target: list[str], user_id: str) -> None:
        if len(target) < MAX_NAMED:
            target.append(user_id)
        else:
            self.more += 1


def compare(board: Board, score: Score | None, other: Score | None) -> int:
    """Return 1 when ``score`` ranks ahead of ``other``, -1 when behind, 0 when level."""
    if score is None or other is None:
        return (score is not None) - (other is not None)
    if score == other:
        return 0
    ahead = score > other if board.order is Order.HIGHER else score < other
    return 1 if ahead else -1


def find_overtakes(
    board: Board,
    followed: str,
    old_score: Score | None,
    new_score: Score | None,
    moves: Iterable[tuple[str, Score | None, Score | None]],
) -> Overtakes:
    """Compare the followed athlete with each ``(user_id, old_score, new_score)`` of ``moves``.

    ``moves`` contains the athletes whose scores changed and those who kept their score
    but lie between the followed athlete's old and new score.
    """
    found = Overtakes()
    if old_score is None or new_score is None:
        # A newcomer's first score places them; it passes nobody in particular.
        return found
    for user_id, other_old, other_new in moves:
        if user_id == followed:
            continue
        before = compare(board, other_old, old_score)
        after = compare(board, other_new, new_score)
        if before >= 0 and after < 0:
            found.add(found.passed, user_id)
        elif before <= 0 and after > 0:
            found.add(found.passed_by, user_id)
    return found


def sort_score(board: Board, display_score: Score) -> int:
    """Return the sorted-set score of a displayed score, the inverse of ``Board.display_score``."""
    if board.operator is Operator.COUNT:
        scaled = int(display_score)
    else:
        scaled = round(display_score * board.scale)
    return scaled if board.order is Order.HIGHER else -scaled


def passed_range(board: Board, old_score: Score, new_score: Score) -> tuple[str, str] | None:
    """Return the sorted-set score range (ZRANGEBYSCORE bounds) of athletes the followed one moved across.

    Those athletes did not change their score, so only the followed athlete's move
    can have changed their order. None when the followed athlete did not move.
    """
    old_sort, new_sort = sort_score(board, old_score), sort_score(board, new_score)
    if old_sort == new_sort:
        return None
    if new_sort > old_sort:
        # Moved up: passed everyone from level with the old score to below the new one.
        return str(old_sort), f"({new_sort}"
    # Moved down: passed by everyone from above the new score up to level with the old one.
    return f"({new_sort}", str(old_sort)
