"""Recent rank changes per board period, for resume and gap detection. No I/O here.

The ranker numbers the updates of each board period 1, 2, 3, ... (``BoardUpdate.seq``).
The gateway keeps the latest updates it received, so a subscription that has seen
everything up to ``seq`` can be given exactly the changes after it. Redis pub/sub
drops messages while a subscriber is disconnected, so a jump in the numbers means
updates were lost. The history then restarts at the new number, and a subscription
behind it gets a fresh snapshot instead of an incomplete list of changes.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from shared.schema import BoardUpdate, RankChange

BoardPeriod = tuple[str, str]


def merge_changes(updates: list[list[RankChange]]) -> list[RankChange]:
    """Merge consecutive change lists into one change per athlete, spanning the whole interval.

    The merged change keeps the first old rank and score and the last new ones, in
    the order athletes first moved.
    """
    merged: dict[str, RankChange] = {}
    for changes in updates:
        for change in changes:
            previous = merged.get(change.user_id)
            if previous is not None:
                change = RankChange(
                    user_id=change.user_id,
                    score=change.score,
                    rank=change.rank,
                    old_score=previous.old_score,
                    old_rank=previous.old_rank,
                )
            merged[change.user_id] = change
    return list(merged.values())


@dataclass
class BoardHistory:
    """The updates of one board period after ``first_seq - 1``, oldest first.

    ``last_seq`` is the newest update number known; ``first_seq - 1`` is the oldest
    number a subscription may have and still be given the exact changes since.
    """

    last_seq: int
    first_seq: int
    updates: deque[tuple[int, list[RankChange]]] = field(default_factory=deque)
    change_count: int = 0

    def changes_since(self, seq: int) -> list[RankChange] | None:
        """Return the merged changes after ``seq``, or None when some of them are no longer kept."""
        if seq < self.first_seq - 1:
            return None
        return merge_changes([changes for update_seq, changes in self.updates if update_seq > seq])


class History:
    """Bounded histories of many board periods, evicting the least recently updated first."""

    def __init__(self, *, max_changes: int, max_board_periods: int) -> None:
        self.max_changes = max_changes
        self.max_board_periods = max_board_periods
        self.boards: OrderedDict[BoardPeriod, BoardHistory] = OrderedDict()
        self.gaps_detected = 0

    def get(self, board_period: BoardPeriod) -> BoardHistory | None:
        return self.boards.get(board_period)

    def add(self, board_period: BoardPeriod, update: BoardUpdate) -> bool:
        """Record an update of a ranking's period; return True when it shows that earlier updates were lost.

        An update numbered at or below the last one is a duplicate and changes nothing.
        """
        history = self.boards.get(board_period)
        if history is None:
            # The first update seen for this board period: nothing before it is known.
            history = self._start(board_period, update.seq - 1)
        if update.seq <= history.last_seq:
            return False
        gap = update.seq > history.last_seq + 1
        if gap:
            self.gaps_detected += 1
            self._restart(history, update.seq - 1)
        history.updates.append((update.seq, list(update.changes)))
        history.change_count += len(update.changes)
        history.last_seq = update.seq
        self.boards.move_to_end(board_period)
        self._trim(history)
        return gap

    def observe(self, board_period: BoardPeriod, seq: int) -> bool:
        """Record that the board period's counter in Redis is ``seq``; return True when updates were missed.

        Called after reading the counter directly, for example after a pub/sub
        reconnect, when updates published in between were never received.
        The counter never falls below an update that was published, so a
        counter below the last update received means Redis lost or removed it
        (a restart without its data). Numbering then starts again from
        ``seq``, and updates numbered after it are new, however low.
        """
        history = self.boards.get(board_period)
        if history is None:
            self._start(board_period, seq)
            return False
        if seq == history.last_seq:
            return False
        self.gaps_detected += 1
        self._restart(history, seq)
        return True

    def ensure(self, board_period: BoardPeriod, seq: int) -> BoardHistory:
        """Return the history of a board period whose counter in Redis read ``seq``, starting one if needed.

        An existing history is returned unchanged whatever ``seq`` is: a counter
        read just before an update arrived can be below the last number seen
        (a stale read, not a lost update), and one above it may have its update
        still on the way through pub/sub.
        """
        history = self.boards.get(board_period)
        if history is None:
            return self._start(board_period, seq)
        return history

    def _start(self, board_period: BoardPeriod, seq: int) -> BoardHistory:
        history = BoardHistory(last_seq=seq, first_seq=seq + 1)
        self.boards[board_period] = history
        while len(self.boards) > self.max_board_periods:
            self.boards.popitem(last=False)
        return history

    @staticmethod
    def _restart(history: BoardHistory, seq: int) -> None:
        history.updates.clear()
        history.change_count = 0
        history.last_seq = seq
        history.first_seq = seq + 1

    def _trim(self, history: BoardHistory) -> None:
        # Keep the newest update even when it alone exceeds the bound, so the
        # subscriptions one step behind still get exact changes.
        while history.change_count > self.max_changes and len(history.updates) > 1:
            seq, changes = history.updates.popleft()
            history.change_count -= len(changes)
            history.first_seq = seq + 1


def plan_resume(since: int | None, redis_seq: int, history: BoardHistory) -> tuple[bool, int, list[RankChange]]:
    """Decide a new subscription's first message: ``(resumed, seq, changes)``.

    Without ``since``, or when ``since`` is beyond the board's counter (the board
    was reset), the result is a fresh snapshot at the counter. When the gateway
    still has every change after ``since`` the snapshot is ``resumed`` and carries
    them. A ``since`` between this gateway's last update and the counter comes
    from a client that another gateway served further; it has nothing to catch up.
    """
    if since is None or since > redis_seq:
        return False, redis_seq, []
    if since >= history.last_seq:
        return True, since, []
    changes = history.changes_since(since)
    if changes is None:
        return False, redis_seq, []
    return True, history.last_seq, changes
