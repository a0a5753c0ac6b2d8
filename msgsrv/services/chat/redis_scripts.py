"""The Lua scripts the Redis chat store runs: each change of the shared state is one script.

A script runs atomically in Redis, so a change and the event announcing it
(PUBLISH from the script) are one step: every daemon sees the events in the
order the changes were made, and a join's history read and its JOIN event
fall between the same two messages.  ``ARGV[1]`` of every script is the key
prefix ``P``.  Keys (``KEY`` a case-folded room or nick, ``MID`` a member id
``DAEMON/N``):

=====================  ======================================================
``P:nicks``            hash nick key -> member id (the nick is taken)
``P:names``            hash member id -> ``KEY US NICK``
``P:rooms``            hash room key -> display name (``lobby`` always)
``P:r:KEY``            sorted set of a room's member ids, by join order
``P:h:KEY``            list of a room's history lines (``HIST ...``), bounded
``P:j:MID``            set of the room keys a member is in
``P:d:DAEMON``         set of a daemon's member ids
``P:alive:DAEMON``     a daemon's presence (expires without heartbeat)
``P:daemons``          set of daemon ids (reaped once their presence expired)
``P:seq``              join order counter
=====================  ======================================================

Channels: ``P:events`` (every daemon) and ``P:to:DAEMON`` (a joiner's history).
Scripts return a list whose first item is ``ok`` or the refusal.
"""

import hashlib

from .state import LOBBY

__all__ = ["Script", "SCRIPTS"]

_PRELUDE = r"""
local P = ARGV[1]
local US = '\31'
local LOBBY = '%s'
local function daemon_of(mid) return string.match(mid, '^(.*)/') end
local function alive(mid)
  return redis.call('EXISTS', P .. ':alive:' .. daemon_of(mid)) == 1
end
local function drop_room(key)
  if key ~= LOBBY and redis.call('ZCARD', P .. ':r:' .. key) == 0 then
    redis.call('DEL', P .. ':r:' .. key, P .. ':h:' .. key)
    redis.call('HDEL', P .. ':rooms', key)
  end
end
local function enter(mid, key, name)
  redis.call('HSETNX', P .. ':rooms', key, name)
  if not redis.call('ZSCORE', P .. ':r:' .. key, mid) then
    redis.call('ZADD', P .. ':r:' .. key, redis.call('INCR', P .. ':seq'), mid)
  end
  redis.call('SADD', P .. ':j:' .. mid, key)
end
local function nick_of(entry)
  local cut = string.find(entry, US, 1, true)
  return string.sub(entry, 1, cut - 1), string.sub(entry, cut + 1)
end
local function quit(mid, reason)
  local entry = redis.call('HGET', P .. ':names', mid)
  redis.call('SREM', P .. ':d:' .. daemon_of(mid), mid)
  if not entry then return 0 end
  local key, nick = nick_of(entry)
  local event = {'Q', mid, nick, reason}
  for _, room in ipairs(redis.call('SMEMBERS', P .. ':j:' .. mid)) do
    redis.call('ZREM', P .. ':r:' .. room, mid)
    drop_room(room)
    event[#event + 1] = room
  end
  redis.call('DEL', P .. ':j:' .. mid)
  redis.call('HDEL', P .. ':names', mid)
  if redis.call('HGET', P .. ':nicks', key) == mid then redis.call('HDEL', P .. ':nicks', key) end
  redis.call('PUBLISH', P .. ':events', table.concat(event, US))
  return 1
end
""" % LOBBY

_SOURCES = {
    # ARGV: P, MID, KEY, NICK, OLD KEY (or ''), the NICK event
    "nick": r"""
local mid, key = ARGV[2], ARGV[3]
local owner = redis.call('HGET', P .. ':nicks', key)
if owner and owner ~= mid and alive(owner) then return {'taken'} end
if ARGV[5] ~= '' and ARGV[5] ~= key and redis.call('HGET', P .. ':nicks', ARGV[5]) == mid then
  redis.call('HDEL', P .. ':nicks', ARGV[5])
end
redis.call('HSET', P .. ':nicks', key, mid)
redis.call('HSET', P .. ':names', mid, key .. US .. ARGV[4])
redis.call('SADD', P .. ':d:' .. daemon_of(mid), mid)
redis.call('PUBLISH', P .. ':events', ARGV[6])
return {'ok'}
""",
    # ARGV: P, MID, KEY, NAME, NICK, REQUEST, HISTORY BOUND
    "join": r"""
local mid, key = ARGV[2], ARGV[3]
if redis.call('HEXISTS', P .. ':names', mid) == 0 then return {'unregistered'} end
enter(mid, key, ARGV[4])
local name = redis.call('HGET', P .. ':rooms', key)
local lines = {}
if ARGV[7] ~= '0' then lines = redis.call('LRANGE', P .. ':h:' .. key, -tonumber(ARGV[7]), -1) end
redis.call('PUBLISH', P .. ':to:' .. daemon_of(mid),
           table.concat({'H', mid, key, table.concat(lines)}, US))
redis.call('PUBLISH', P .. ':events', table.concat({'J', key, name, mid, ARGV[5], ARGV[6]}, US))
return {'ok', name}
""",
    # ARGV: P, MID, KEY, the LEAVE event
    "leave": r"""
redis.call('ZREM', P .. ':r:' .. ARGV[3], ARGV[2])
redis.call('SREM', P .. ':j:' .. ARGV[2], ARGV[3])
drop_room(ARGV[3])
redis.call('PUBLISH', P .. ':events', ARGV[4])
return {'ok'}
""",
    # ARGV: P, HISTORY BOUND, PAYLOAD, then per room: KEY, COUNT, COUNT history lines
    "say": r"""
local bound = tonumber(ARGV[2])
local i = 4
while i <= #ARGV do
  local key, n = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  if bound > 0 and redis.call('HEXISTS', P .. ':rooms', key) == 1 then
    local last = i + n - 1
    for j = math.max(i, last - bound + 1), last, 1000 do
      redis.call('RPUSH', P .. ':h:' .. key, unpack(ARGV, j, math.min(j + 999, last)))
    end
    redis.call('LTRIM', P .. ':h:' .. key, -bound, -1)
  end
  i = i + n
end
redis.call('PUBLISH', P .. ':events', ARGV[3])
return {'ok'}
""",
    # ARGV: P, TARGET KEY, SENDER MID, SENDER NICK, TEXT, REQUEST
    "private": r"""
local target = redis.call('HGET', P .. ':nicks', ARGV[2])
if not target or not alive(target) then return {'none'} end
local entry = redis.call('HGET', P .. ':names', target)
if not entry then return {'none'} end
local _, nick = nick_of(entry)
redis.call('PUBLISH', P .. ':events',
           table.concat({'P', target, ARGV[3], ARGV[4], nick, ARGV[5], ARGV[6]}, US))
return {'ok', nick}
""",
    # ARGV: P, MID, REASON
    "quit": r"""
return {'ok', quit(ARGV[2], ARGV[3])}
""",
    # ARGV: P, ROOM KEY
    "who": r"""
local name = redis.call('HGET', P .. ':rooms', ARGV[2])
if not name then return {'none'} end
local mids = redis.call('ZRANGE', P .. ':r:' .. ARGV[2], 0, -1)
local out = {'ok', name}
for i = 1, #mids, 1000 do
  local entries = redis.call('HMGET', P .. ':names', unpack(mids, i, math.min(i + 999, #mids)))
  for _, entry in ipairs(entries) do
    if entry then
      local _, nick = nick_of(entry)
      out[#out + 1] = nick
    end
  end
end
return out
""",
    # ARGV: P
    "rooms": r"""
local all = redis.call('HGETALL', P .. ':rooms')
local out = {'ok'}
for i = 1, #all, 2 do
  out[#out + 1] = all[i]
  out[#out + 1] = all[i + 1]
  out[#out + 1] = redis.call('ZCARD', P .. ':r:' .. all[i])
end
return out
""",
    # ARGV: P, MID, KEY, NICK, then per room: KEY, NAME (its rooms, exactly)
    "register": r"""
local mid, key = ARGV[2], ARGV[3]
local owner = redis.call('HGET', P .. ':nicks', key)
if owner and owner ~= mid and alive(owner) then return {'taken'} end
redis.call('HSET', P .. ':nicks', key, mid)
redis.call('HSET', P .. ':names', mid, key .. US .. ARGV[4])
redis.call('SADD', P .. ':d:' .. daemon_of(mid), mid)
local want = {}
for i = 5, #ARGV, 2 do want[ARGV[i]] = true end
for _, room in ipairs(redis.call('SMEMBERS', P .. ':j:' .. mid)) do
  if not want[room] then
    redis.call('ZREM', P .. ':r:' .. room, mid)
    redis.call('SREM', P .. ':j:' .. mid, room)
    drop_room(room)
  end
end
for i = 5, #ARGV, 2 do enter(mid, ARGV[i], ARGV[i + 1]) end
return {'ok'}
""",
    # ARGV: P, DAEMON: its member ids
    "members": r"""
return {'ok', unpack(redis.call('SMEMBERS', P .. ':d:' .. ARGV[2]))}
""",
    # ARGV: P, DAEMON, TTL MS, INFO, REAP ('1' or '0'), REASON BEFORE, REASON AFTER the id
    "heartbeat": r"""
local me = ARGV[2]
local had = redis.call('EXISTS', P .. ':alive:' .. me)
redis.call('SET', P .. ':alive:' .. me, ARGV[4], 'PX', ARGV[3])
redis.call('SADD', P .. ':daemons', me)
redis.call('HSETNX', P .. ':rooms', LOBBY, LOBBY)
local out = {'ok', had}
if ARGV[5] == '1' then
  for _, d in ipairs(redis.call('SMEMBERS', P .. ':daemons')) do
    if d ~= me and redis.call('EXISTS', P .. ':alive:' .. d) == 0 then
      redis.call('SREM', P .. ':daemons', d)
      local n = 0
      for _, mid in ipairs(redis.call('SMEMBERS', P .. ':d:' .. d)) do
        n = n + quit(mid, ARGV[6] .. d .. ARGV[7])
      end
      redis.call('DEL', P .. ':d:' .. d)
      out[#out + 1] = d
      out[#out + 1] = n
    end
  end
end
return out
""",
    # ARGV: P, DAEMON, REASON: every member quits, the presence ends
    "depart": r"""
local n = 0
for _, mid in ipairs(redis.call('SMEMBERS', P .. ':d:' .. ARGV[2])) do
  n = n + quit(mid, ARGV[3])
end
redis.call('DEL', P .. ':d:' .. ARGV[2], P .. ':alive:' .. ARGV[2])
redis.call('SREM', P .. ':daemons', ARGV[2])
return {'ok', n}
""",
    # ARGV: P: every room with its members' nicks, then every nick (tests, tools)
    "snapshot": r"""
local out = {'ok'}
local all = redis.call('HGETALL', P .. ':rooms')
local rooms = {}
for i = 1, #all, 2 do
  local nicks = {}
  for _, mid in ipairs(redis.call('ZRANGE', P .. ':r:' .. all[i], 0, -1)) do
    local entry = redis.call('HGET', P .. ':names', mid)
    if entry then
      local _, nick = nick_of(entry)
      nicks[#nicks + 1] = nick
    end
  end
  rooms[#rooms + 1] = all[i + 1]
  rooms[#rooms + 1] = nicks
end
out[2] = rooms
local names = {}
for _, entry in ipairs(redis.call('HVALS', P .. ':names')) do
  local _, nick = nick_of(entry)
  names[#names + 1] = nick
end
out[3] = names
return out
""",
}


class Script:
    """One Lua script: its ``name``, full ``source`` and the ``sha`` EVALSHA names it by."""

    __slots__ = ("name", "source", "sha")

    def __init__(self, name, body):
        self.name = name
        self.source = _PRELUDE + body
        self.sha = hashlib.sha1(self.source.encode("utf-8")).hexdigest()


SCRIPTS = {name: Script(name, body) for name, body in _SOURCES.items()}
