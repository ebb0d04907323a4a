"""Access checks of the handshake: signed tokens naming the boards a client may follow, and the origin allow-list. No I/O here.

With ``RANKSTREAM_WS_JWT_SECRET`` set, every connection needs a JWT signed with
HS256 under that secret, with an ``exp`` claim and a ``boards`` claim listing the
board ids it may follow (``["*"]`` for all). Without the secret, read access is open.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs

import jwt

ALGORITHMS = ["HS256"]


class AccessError(Exception):
    """A rejected handshake; ``status`` is the HTTP status of the response."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Grant:
    """The boards one connection may follow (None for every board) and its token's expiry as a Unix time."""

    boards: frozenset[str] | None = None
    expires_at: float | None = None

    def allows(self, board_id: str) -> bool:
        return self.boards is None or board_id in self.boards


OPEN_GRANT = Grant()


def token_from_request(authorization: str | None, query: str) -> str | None:
    """Return the bearer token from the Authorization header, else from the ``token`` query parameter."""
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    values = parse_qs(query).get("token")
    return values[0] if values else None


def verify_token(token: str | None, secret: str) -> Grant:
    """Check a token's signature, expiry and ``boards`` claim; raise AccessError (401) naming what is wrong."""
    if token is None:
        raise AccessError(401, "a token is required; send 'Authorization: Bearer <jwt>' or add ?token=<jwt> to the URL")
    try:
        claims = jwt.decode(token, secret, algorithms=ALGORITHMS, options={"require": ["exp"]})
    except jwt.ExpiredSignatureError:
        raise AccessError(401, "the token has expired; request a new one") from None
    except jwt.MissingRequiredClaimError:
        raise AccessError(401, "the token has no 'exp' claim; tokens must expire") from None
    except jwt.InvalidTokenError:
        raise AccessError(401, "the token is invalid: its signature, algorithm (HS256 expected) or format is wrong") from None
    boards = claims.get("boards")
    if not isinstance(boards, list) or not boards or not all(isinstance(board, str) for board in boards):
        raise AccessError(401, "the token's 'boards' claim must be a non-empty list of board ids, or [\"*\"] for every board")
    allowed = None if "*" in boards else frozenset(boards)
    return Grant(boards=allowed, expires_at=float(claims["exp"]))


def check_origin(origin: str | None, allowed_origins: frozenset[str]) -> None:
    """Raise AccessError (403) when a browser's Origin is not on the allow-list.

    An empty list allows every origin. A request without Origin is not from a
    browser page and is allowed: the header only protects browser users.
    """
    if not allowed_origins or origin is None:
        return
    if origin.rstrip("/") not in allowed_origins:
        raise AccessError(403, f"origin {origin!r} is not allowed; add it to RANKSTREAM_WS_ALLOWED_ORIGINS")
