"""Anti-cheat rules for one score event: clean display name, known metric, plausible value, sane time.

Pure decisions with no I/O. An event that breaks a rule is rejected with a
FieldError naming the field; nothing is flagged and kept for review.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import msgspec

from shared.schema import FieldError, ScoreEvent, check_event

MAX_DISPLAY_NAME_CHARACTERS = 64

# Bidirectional embedding, override and isolate controls, plus the implicit
# marks: they can reverse how a neighbouring name or score is shown.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

# Control characters (Cc) and line or paragraph separators (Zl, Zp) break
# single-line display in apps and logs.
_REMOVED_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})

# The error message lists at most this many accepted metrics.
_LISTED_METRICS = 20


def clean_display_name(name: str) -> str:
    """Return ``name`` NFKC-normalised, without control and bidi characters, stripped of outer spaces."""
    normalised = unicodedata.normalize("NFKC", name)
    visible = (
        character
        for character in normalised
        if character not in BIDI_CONTROLS and unicodedata.category(character) not in _REMOVED_CATEGORIES
    )
    return "".join(visible).strip()


@dataclass(frozen=True)
class Bounds:
    """The plausible range of one event's value for a metric; None is unbounded."""

    minimum: float | None
    maximum: float | None

    def contains(self, value: float) -> bool:
        if self.minimum is not None and value < self.minimum:
            return False
        return self.maximum is None or value <= self.maximum

    def describe(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"from {_number(self.minimum)} to {_number(self.maximum)}"
        if self.minimum is not None:
            return f"at least {_number(self.minimum)}"
        return f"at most {_number(self.maximum)}"


def _number(value: float | None) -> str:
    return str(int(value)) if value is not None and float(value).is_integer() else str(value)


@dataclass(frozen=True)
class EventRules:
    """The accepted metrics, the plausible value range per metric and the allowed clock skew.

    ``board_metrics`` is the board registry's own ``by_metric`` mapping, kept by
    reference, so boards added or removed at run time change what is accepted.
    """

    board_metrics: Mapping[str, object]
    allowed_metrics: frozenset[str]
    bounds: Mapping[str, Bounds]
    max_clock_skew_s: int

    @classmethod
    def build(
        cls,
        board_metrics: Mapping[str, object],
        allowed_metrics: Iterable[str],
        metric_bounds: Mapping[str, tuple[float | None, float | None]],
        max_clock_skew_s: int,
    ) -> EventRules:
        """Accept the metrics of the boards plus ``allowed_metrics``."""
        bounds = {metric: Bounds(minimum, maximum) for metric, (minimum, maximum) in metric_bounds.items()}
        return cls(board_metrics, frozenset(allowed_metrics), bounds, max_clock_skew_s)

    @property
    def accepted_metrics(self) -> frozenset[str]:
        return frozenset(self.board_metrics) | self.allowed_metrics

    def apply(self, event: ScoreEvent, now: datetime) -> ScoreEvent:
        """Return the event with its display name cleaned; raise FieldError for the first broken rule."""
        if event.display_name is not None:
            name = clean_display_name(event.display_name)
            if not name:
                raise FieldError("display_name", "must contain visible characters; omit display_name to keep the current one")
            if len(name) > MAX_DISPLAY_NAME_CHARACTERS:
                raise FieldError("display_name", f"is {len(name)} characters after NFKC normalisation; send at most {MAX_DISPLAY_NAME_CHARACTERS}")
            if name != event.display_name:
                event = msgspec.structs.replace(event, display_name=name)

        # Finite and exact values first, so the bounds below never see NaN.
        check_event(event)

        if event.metric not in self.board_metrics and event.metric not in self.allowed_metrics:
            listed = ", ".join(sorted(self.accepted_metrics)[:_LISTED_METRICS])
            raise FieldError(
                "metric",
                f"{event.metric!r} is not accepted; use a metric of a board ({listed}) or ask the operator to add it to RANKSTREAM_ALLOWED_METRICS",
            )

        bounds = self.bounds.get(event.metric)
        if bounds is not None and not bounds.contains(event.value):
            raise FieldError("value", f"{event.value} is implausible for metric {event.metric!r}; one event must be {bounds.describe()}")

        ahead_s = (event.occurred_at - now).total_seconds()
        if ahead_s > self.max_clock_skew_s:
            raise FieldError(
                "occurred_at",
                f"is {ahead_s:.0f} s in the future; at most {self.max_clock_skew_s} s of clock skew is allowed, so send when the workout ended",
            )
        return event
