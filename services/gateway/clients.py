"""One connected client: its connection, its subscriptions, what it may follow and how far behind it is."""

from __future__ import annotations

from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection

from services.gateway.access import Grant
from services.gateway.hub import Subscription


@dataclass(eq=False)
class Client:
    """A WebSocket connection and its subscriptions by client-chosen id.

    ``slow_since`` is the loop time from which its send buffer has stayed above
    the high-water mark, or None while it keeps up.
    """

    connection: ServerConnection
    connection_id: str
    ip: str
    grant: Grant
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    slow_since: float | None = None
    closing: bool = False

    def buffered_bytes(self) -> int:
        """Return the bytes written to the connection that the kernel has not taken yet."""
        transport = self.connection.transport
        if transport is None or transport.is_closing():
            return 0
        return transport.get_write_buffer_size()
