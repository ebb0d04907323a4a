"""Typed environment values: defaults when unset, and one message per kind of mistake, naming the variable and the fix."""

from __future__ import annotations

import pytest

from shared.env_values import SettingsError, read_flag, read_int, read_number, read_url


@pytest.mark.parametrize(("raw", "expected"), [(None, 7), ("", 7), ("12", 12), (" 12 ", 12), ("10.0", 10), ("1e1", 10), ("0", 0)])
def test_read_int_values(raw: str | None, expected: int) -> None:
    env = {} if raw is None else {"N": raw}
    assert read_int(env, "N", 7, 0, 20) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("eighty", "N='eighty' is not a whole number; set it to a whole number from 0 to 20"),
        ("2.5", "N='2.5' is not a whole number; set it to a whole number from 0 to 20"),
        ("nan", "N='nan' is not a whole number; set it to a whole number from 0 to 20"),
        ("inf", "N='inf' is not a whole number; set it to a whole number from 0 to 20"),
        ("7.99999999999999999", "N='7.99999999999999999' is not a whole number; set it to a whole number from 0 to 20"),
        ("8.0000000000000001", "N='8.0000000000000001' is not a whole number; set it to a whole number from 0 to 20"),
        ("21", "N=21 is out of range; set it to a whole number from 0 to 20"),
        ("-1", "N=-1 is out of range; set it to a whole number from 0 to 20"),
    ],
)
def test_read_int_mistakes(raw: str, message: str) -> None:
    with pytest.raises(SettingsError) as error:
        read_int({"N": raw}, "N", 7, 0, 20)
    assert str(error.value) == message


def test_read_number() -> None:
    assert read_number({}, "R", 2.5, 0.1, 10) == 2.5
    assert read_number({"R": "0.25"}, "R", 2.5, 0.1, 10) == 0.25
    with pytest.raises(SettingsError) as error:
        read_number({"R": "fast"}, "R", 2.5, 0.1, 10)
    assert str(error.value) == "R='fast' is not a number; set it to a number from 0.1 to 10"
    with pytest.raises(SettingsError) as error:
        read_number({"R": "nan"}, "R", 2.5, 0.1, 10)
    assert str(error.value) == "R='nan' is not a number; set it to a number from 0.1 to 10"
    with pytest.raises(SettingsError) as error:
        read_number({"R": "0.05"}, "R", 2.5, 0.1, 10)
    assert str(error.value) == "R=0.05 is out of range; set it to a number from 0.1 to 10"


@pytest.mark.parametrize(("raw", "expected"), [(None, False), ("1", True), ("TRUE", True), (" on ", True), ("no", False), ("0", False)])
def test_read_flag_values(raw: str | None, expected: bool) -> None:
    env = {} if raw is None else {"F": raw}
    assert read_flag(env, "F", False) is expected


def test_read_flag_mistake() -> None:
    with pytest.raises(SettingsError) as error:
        read_flag({"F": "maybe"}, "F", False)
    assert str(error.value) == "F='maybe' is not a flag; set it to 1 or 0"


def test_read_url() -> None:
    assert read_url({}, "U", ("redis",)) is None
    assert read_url({"U": "redis://127.0.0.1:6379/0"}, "U", ("redis",)) == "redis://127.0.0.1:6379/0"
    with pytest.raises(SettingsError) as error:
        read_url({"U": "http://127.0.0.1"}, "U", ("redis", "rediss"))
    assert str(error.value) == "U has scheme 'http'; use a URL starting with redis://, rediss://"
