"""Trimming the events stream below the position every consumer group has acknowledged.

An entry may be removed only when every group has acknowledged it. For one
group, the lowest entry it still needs is its oldest pending entry, or, with
nothing pending, the entry right after its last-delivered id. The script below
takes the minimum of these over all groups and runs ``XTRIM MINID`` with it,
all in one atomic call, so no group can move between the reading and the
trimming. It trims nothing unless every required group exists, because a group
created later starts from the beginning of the stream.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as redis
import structlog

log = structlog.get_logger(__name__)

# KEYS[1] events stream. ARGV: the names of the groups that must all exist.
# Returns {entries trimmed, first id kept} or {-1, missing group name}.
TRIM_SCRIPT = """
local stream = KEYS[1]
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function lower(a, b)
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  if ams ~= bms then
    return ams < bms
  end
  return aseq < bseq
end

local groups = {}
for _, info in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local fields = {}
  for i = 1, #info, 2 do
    fields[info[i]] = info[i + 1]
  end
  groups[fields['name']] = fields
end

local keep_from = nil
for _, name in ipairs(ARGV) do
  local group = groups[name]
  if group == nil then
    return {-1, name}
  end
  local needed
  if tonumber(group['pending']) > 0 then
    needed = redis.call('XPENDING', stream, name)[2]
  else
    local ms, seq = parse(group['last-delivered-id'])
    needed = string.format('%d-%d', ms, seq + 1)
  end
  if keep_from == nil or lower(needed, keep_from) then
    keep_from = needed
  end
end
if keep_from == nil then
  return {0, ''}
end
return {redis.call('XTRIM', stream, 'MINID', keep_from), keep_from}
"""


class StreamTrimmer:
    """Run the trim script; one instance per consumer process."""

    def __init__(self, client: redis.Redis, stream: str, groups: Sequence[str]) -> None:
        self.stream = stream
        self.groups = list(groups)
        self.script = client.register_script(TRIM_SCRIPT)

    async def trim_acknowledged(self) -> int:
        """Remove the entries every group has acknowledged; return how many were removed.

        Returns 0 without trimming when one of the groups does not exist yet.
        """
        trimmed, detail = await self.script(keys=[self.stream], args=self.groups)
        if trimmed == -1:
            log.debug("stream not trimmed, group missing", stream=self.stream, group=detail.decode())
            return 0
        if trimmed:
            log.debug("stream trimmed", stream=self.stream, entries=trimmed, first_kept_id=detail.decode())
        return int(trimmed)
