"""Deleting idle consumers from a group, never one that still owns pending entries.

``XGROUP DELCONSUMER`` drops the consumer's pending entries with it, so those
entries would never be processed by that group. The script checks the pending
count and deletes in one atomic call, so a consumer cannot read new entries
between the check and the deletion.
"""

from __future__ import annotations

import redis.asyncio as redis
import structlog

log = structlog.get_logger(__name__)

# KEYS[1] stream. ARGV[1] group, ARGV[2] minimum idle time in ms, ARGV[3] a
# consumer never to delete (the caller). Returns the names deleted.
DELETE_IDLE_SCRIPT = """
local deleted = {}
for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local fields = {}
  for i = 1, #info, 2 do
    fields[info[i]] = info[i + 1]
  end
  if fields['name'] ~= ARGV[3] and tonumber(fields['pending']) == 0 and tonumber(fields['idle']) >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], fields['name'])
    deleted[#deleted + 1] = fields['name']
  end
end
return deleted
"""


class IdleConsumerCleaner:
    """Delete consumers of one group that have been idle for ``idle_ms`` and own no pending entries."""

    def __init__(self, client: redis.Redis, stream: str, group: str, keep_consumer: str, idle_ms: int) -> None:
        self.stream = stream
        self.group = group
        self.keep_consumer = keep_consumer
        self.idle_ms = idle_ms
        self.script = client.register_script(DELETE_IDLE_SCRIPT)

    async def delete_idle_consumers(self) -> list[str]:
        """Return the names of the consumers deleted now."""
        reply = await self.script(keys=[self.stream], args=[self.group, self.idle_ms, self.keep_consumer])
        deleted = [name.decode() for name in reply]
        if deleted:
            log.info("idle consumers deleted", group=self.group, consumers=deleted, idle_ms=self.idle_ms)
        return deleted
