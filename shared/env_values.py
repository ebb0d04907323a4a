"""One typed value read from an environment mapping, or SettingsError naming the variable and the fix.

shared/settings.py and the gateway's own options read their variables
through these, so the same kind of mistake gets the same message everywhere.
An unset or empty variable gives the default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class SettingsError(ValueError):
    """An environment variable contains a value Rankstream cannot use."""


def _given(env: Mapping[str, str], name: str) -> str | None:
    """Return the text of ``name``, or None when it is unset or empty."""
    raw = env.get(name)
    return None if raw is None or raw == "" else raw


def read_int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    """Return the whole number in ``name``, from ``minimum`` to ``maximum``; ``10.0`` or ``1e3`` count, being exactly whole."""
    raw = _given(env, name)
    if raw is None:
        return default
    fix = f"set it to a whole number from {minimum} to {maximum}"
    try:
        value = int(raw)
    except ValueError:
        # Decimal, not float: 7999.99999999999999 is not 8000.
        try:
            number = Decimal(raw.strip())
        except InvalidOperation:
            number = Decimal("NaN")
        if not number.is_finite() or number != number.to_integral_value():
            raise SettingsError(f"{name}={raw!r} is not a whole number; {fix}") from None
        value = int(number)
    if not minimum <= value <= maximum:
        raise SettingsError(f"{name}={value} is out of range; {fix}")
    return value


def read_number(env: Mapping[str, str], name: str, default: float, minimum: float, maximum: float) -> float:
    """Return the finite number in ``name``, from ``minimum`` to ``maximum``."""
    raw = _given(env, name)
    if raw is None:
        return default
    fix = f"set it to a number from {minimum:g} to {maximum:g}"
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise SettingsError(f"{name}={raw!r} is not a number; {fix}")
    if not minimum <= value <= maximum:
        raise SettingsError(f"{name}={value:g} is out of range; {fix}")
    return value


def read_flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """Return the flag in ``name``: 1, true, yes or on, and 0, false, no or off, in any case."""
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r} is not a flag; set it to 1 or 0")


def read_url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str | None:
    """Return the URL in ``name`` if its scheme is one of ``schemes``, or None when unset."""
    raw = _given(env, name)
    if raw is None:
        return None
    scheme = urlsplit(raw).scheme
    if scheme not in schemes:
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise SettingsError(f"{name} has scheme {scheme!r}; use a URL starting with {allowed}")
    return raw
