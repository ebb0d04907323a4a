"""The gateway's pure parts: history and resume plans, overtakes, message parsing, tokens and settings."""

from __future__ import annotations

import time

import jwt
import pytest

from services.gateway.access import AccessError, check_origin, token_from_request, verify_token
from services.gateway.config import GatewayConfig
from services.gateway.history import History, merge_changes, plan_resume
from services.gateway.messages import with_head
from services.gateway.overtakes import MAX_NAMED, find_overtakes, passed_range
from services.gateway.protocol import ProtocolError, Subscribe, parse_client_message
from shared.boards import Board, Operator, Order
from shared.schema import BoardUpdate, RankChange
from shared.settings import SettingsError

BOARD_PERIOD = ("b", "all")
HIGHER = Board(id="b", metric="m", operator=Operator.SUM)
LOWER = Board(id="t", metric="m", operator=Operator.BEST, order=Order.LOWER, decimals=1)


def change(user: str, score: int, rank: int, old_score: int | None = None, old_rank: int | None = None) -> RankChange:
    return RankChange(user_id=user, score=score, rank=rank, old_score=old_score, old_rank=old_rank)


def update(seq: int, *changes: RankChange) -> BoardUpdate:
    return BoardUpdate(board="b", period="all", seq=seq, changes=list(changes))


def test_history_gives_changes_since_seq() -> None:
    """Changes after a seq are merged per athlete, first old value and last new value."""
    history = History(max_changes=100, max_board_periods=10)
    assert history.add(BOARD_PERIOD, update(1, change("a", 5, 1))) is False
    assert history.add(BOARD_PERIOD, update(2, change("b", 7, 1), change("a", 6, 2, 5, 1))) is False
    assert history.add(BOARD_PERIOD, update(3, change("a", 9, 1, 6, 2))) is False
    assert history.add(BOARD_PERIOD, update(3, change("z", 1, 1))) is False
    board = history.get(BOARD_PERIOD)
    assert board.changes_since(3) == []
    assert board.changes_since(1) == [change("b", 7, 1), change("a", 9, 1, 5, 1)]
    assert board.changes_since(0) == [change("a", 9, 1), change("b", 7, 1)]


def test_history_gap_restarts() -> None:
    """A skipped number restarts the history, so older subscriptions cannot get exact changes."""
    history = History(max_changes=100, max_board_periods=10)
    history.add(BOARD_PERIOD, update(1, change("a", 5, 1)))
    assert history.add(BOARD_PERIOD, update(3, change("b", 7, 1))) is True
    board = history.get(BOARD_PERIOD)
    assert board.changes_since(1) is None
    assert board.changes_since(2) == [change("b", 7, 1)]
    assert history.observe(BOARD_PERIOD, 3) is False
    assert history.observe(BOARD_PERIOD, 5) is True
    assert board.changes_since(3) is None
    assert history.gaps_detected == 2


def test_history_counter_reset_restarts() -> None:
    """A counter below the last update received restarts the numbering, so the next low numbers are taken."""
    history = History(max_changes=100, max_board_periods=10)
    history.add(BOARD_PERIOD, update(7, change("a", 5, 1)))
    assert history.observe(BOARD_PERIOD, 0) is True
    assert history.add(BOARD_PERIOD, update(1, change("b", 7, 1))) is False
    board = history.get(BOARD_PERIOD)
    assert (board.first_seq, board.last_seq) == (1, 1)
    assert board.changes_since(0) == [change("b", 7, 1)]
    assert history.gaps_detected == 1


def test_history_trims_and_evicts() -> None:
    """Past max_changes the oldest updates go; past max_board_periods the least recently updated."""
    history = History(max_changes=2, max_board_periods=2)
    for seq in range(1, 5):
        history.add(BOARD_PERIOD, update(seq, change(f"u{seq}", seq, 1)))
    board = history.get(BOARD_PERIOD)
    assert (board.first_seq, board.change_count) == (3, 2)
    assert board.changes_since(1) is None
    assert board.changes_since(2) == [change("u3", 3, 1), change("u4", 4, 1)]
    history.add(("c", "all"), update(1))
    history.add(("d", "all"), update(1))
    assert list(history.boards) == [("c", "all"), ("d", "all")]


def test_history_ensure_keeps_existing_history() -> None:
    """A counter read racing with an update, below or above the last seq, leaves the history alone."""
    history = History(max_changes=10, max_board_periods=10)
    history.add(BOARD_PERIOD, update(4, change("a", 1, 1)))
    assert history.ensure(BOARD_PERIOD, 6).last_seq == 4
    assert history.ensure(BOARD_PERIOD, 2).last_seq == 4
    assert history.get(BOARD_PERIOD).changes_since(3) == [change("a", 1, 1)]
    assert history.ensure(("new", "all"), 7).last_seq == 7


@pytest.mark.parametrize(
    ("since", "counter", "expected"),
    [
        (None, 4, (False, 4, [])),
        (9, 4, (False, 4, [])),
        (4, 4, (True, 4, [])),
        (2, 4, (True, 4, [change("c", 3, 1), change("d", 4, 1)])),
        (0, 4, (False, 4, [])),
    ],
)
def test_plan_resume(since, counter, expected) -> None:
    """Resume from since when every change after it is kept, else a fresh snapshot."""
    history = History(max_changes=3, max_board_periods=10)
    for seq, user in zip(range(1, 5), "abcd", strict=True):
        history.add(BOARD_PERIOD, update(seq, change(user, seq, 1)))
    assert plan_resume(since, counter, history.get(BOARD_PERIOD)) == expected


def test_plan_resume_behind_other_gateway() -> None:
    """A since between this gateway's last update and the counter has nothing to catch up."""
    history = History(max_changes=10, max_board_periods=10)
    history.add(BOARD_PERIOD, update(1, change("a", 1, 1)))
    assert plan_resume(3, 3, history.get(BOARD_PERIOD)) == (True, 3, [])


def test_merge_changes_keeps_first_old_values() -> None:
    merged = merge_changes([[change("a", 5, 2)], [change("a", 8, 1, 5, 2), change("b", 1, 3, 0, 2)]])
    assert merged == [change("a", 8, 1), change("b", 1, 3, 0, 2)]


def test_overtakes_both_directions() -> None:
    """Passing, being passed, ties and newcomers on a higher-is-better board."""
    moves = [("up", 10, 30), ("new", None, 40), ("tie", 15, 25), ("low", 1, 2), ("me", 20, 25)]
    found = find_overtakes(HIGHER, "me", 20, 25, moves)
    assert found.passed == []
    assert found.passed_by == ["up", "new"]
    moves = [("was-ahead", 22, 22), ("tied-before", 20, 20), ("now-tied", 30, 26)]
    found = find_overtakes(HIGHER, "me", 20, 26, moves)
    assert found.passed == ["was-ahead", "tied-before"]
    assert found.passed_by == []


def test_overtakes_lower_is_better_and_cap() -> None:
    """On a fastest-time board a lower time passes; past MAX_NAMED the rest are counted."""
    moves = [(f"u{i}", 30.0, 31.0) for i in range(MAX_NAMED + 3)]
    found = find_overtakes(LOWER, "me", 32.0, 29.5, moves)
    assert len(found.passed) == MAX_NAMED
    assert found.more == 3
    assert find_overtakes(LOWER, "me", None, 29.5, moves).passed == []


def test_passed_range_bounds() -> None:
    """Sorted-set bounds of the athletes crossed by the followed one's move."""
    assert passed_range(HIGHER, 10, 20) == ("10", "(20")
    assert passed_range(HIGHER, 20, 10) == ("(10", "20")
    assert passed_range(HIGHER, 10, 10) is None
    assert passed_range(LOWER, 32.0, 29.5) == ("-320", "(-295")


def test_parse_subscribe_defaults() -> None:
    message = parse_client_message('{"type": "subscribe", "id": "a", "board": "b"}')
    assert message == Subscribe(id="a", board="b")
    assert (message.period, message.top, message.around, message.since) == ("current", 10, 0, None)


@pytest.mark.parametrize(
    ("text", "code", "text_out", "subscription_id"),
    [
        (b"{}", "binary_not_supported", "send JSON text frames; binary frames are not supported", None),
        ('{"type": "subscribe", "id": "a", "board": "b", "extra": 1}', "invalid_message", "$: Object contains unknown field `extra`", "a"),
        ('{"type": "subscribe", "id": "a b", "board": "b"}', "invalid_message", None, None),
        ('{"type": "subscribe", "id": "a", "board": "b", "since": -1}', "invalid_message", "since: Expected `int` >= 0", "a"),
        ('"text"', "invalid_message", "the message must be a JSON object with a 'type' field", None),
        ('{"type": 5}', "unknown_type", "type 5 is unknown; use one of subscribe, unsubscribe, ping", None),
    ],
)
def test_parse_errors_name_the_field(text, code, text_out, subscription_id) -> None:
    with pytest.raises(ProtocolError) as error:
        parse_client_message(text)
    assert error.value.code == code
    if text_out is not None:
        assert error.value.message == text_out
    if code != "binary_not_supported" and subscription_id is not None:
        assert error.value.subscription_id == subscription_id


def test_with_head_puts_type_and_id_first() -> None:
    assert with_head("update", "a", b'{"seq":1}') == b'{"type":"update","id":"a","seq":1}'
    assert with_head("final", 'q"', b"{}") == b'{"type":"final","id":"q\\""}'


def test_token_sources_and_claims() -> None:
    """Bearer header first, then the query; the boards claim limits subscriptions."""
    secret = "k" * 32
    good = jwt.encode({"boards": ["a", "b"], "exp": int(time.time()) + 60}, secret, algorithm="HS256")
    assert token_from_request(f"Bearer {good}", "token=other") == good
    assert token_from_request(None, f"x=1&token={good}") == good
    assert token_from_request("Basic abc", "") is None
    grant = verify_token(good, secret)
    assert grant.allows("a")
    assert not grant.allows("c")
    every = verify_token(jwt.encode({"boards": ["*"], "exp": int(time.time()) + 60}, secret, algorithm="HS256"), secret)
    assert every.allows("c")
    with pytest.raises(AccessError) as error:
        verify_token(jwt.encode({"boards": [], "exp": int(time.time()) + 60}, secret, algorithm="HS256"), secret)
    assert error.value.status == 401
    none_alg = jwt.encode({"boards": ["*"], "exp": int(time.time()) + 60}, None, algorithm="none")
    with pytest.raises(AccessError):
        verify_token(none_alg, secret)


def test_origin_check() -> None:
    allowed = frozenset({"https://app.example"})
    check_origin("https://app.example/", allowed)
    check_origin(None, allowed)
    check_origin("https://any.example", frozenset())
    with pytest.raises(AccessError) as error:
        check_origin("https://evil.example", allowed)
    assert error.value.status == 403


def test_config_from_env() -> None:
    """Variables are read with units and ranges; bad values name the variable and the fix."""
    config = GatewayConfig.from_env({"RANKSTREAM_WS_MAX_UPDATES_PER_S": "4", "RANKSTREAM_WS_ALLOWED_ORIGINS": "https://a.example/, https://b.example"})
    assert config.flush_interval_s == 0.25
    assert config.allowed_origins == frozenset({"https://a.example", "https://b.example"})
    assert GatewayConfig.from_env({}) == GatewayConfig()
    with pytest.raises(SettingsError) as error:
        GatewayConfig.from_env({"RANKSTREAM_WS_JWT_SECRET": "short"})
    assert str(error.value) == "RANKSTREAM_WS_JWT_SECRET is 5 bytes long; use at least 32 random bytes"
    with pytest.raises(SettingsError) as error:
        GatewayConfig.from_env({"RANKSTREAM_WS_MAX_SUBSCRIPTIONS": "2.5"})
    assert str(error.value) == "RANKSTREAM_WS_MAX_SUBSCRIPTIONS='2.5' is not a whole number; set it to a whole number from 1 to 10000"
