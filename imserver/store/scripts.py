"""
Lua scripts run inside Redis, so that multi-key changes are atomic.

A :class:`Script` is its source and SHA1; :meth:`imserver.store.redis.Store.eval`
runs it. Core modules define their own scripts next to the logic that needs
them; the ones the foundation needs live here.
"""

import hashlib


class Script:
    def __init__(self, name: str, source: str):
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __repr__(self):
        return f"<Script {self.name}>"


# KEYS[1] counter; ARGV[1] window seconds. Fixed-window counter: returns the
# count in the current window, setting the expiry on the first hit.
RATE_HIT = Script("rate_hit", """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
""")

# KEYS: user hash, phone index, username index. ARGV: id, phone, username,
# then field/value pairs. Creates a user only if the phone and username are
# free; returns 0 on success, 1 if the phone is taken, 2 if the username is.
CREATE_USER = Script("create_user", """
if ARGV[2] ~= '' and redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return 1 end
if ARGV[3] ~= '' and redis.call('HEXISTS', KEYS[3], string.lower(ARGV[3])) == 1 then return 2 end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[2], ARGV[2], ARGV[1]) end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[3], string.lower(ARGV[3]), ARGV[1]) end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 0
""")

# KEYS[1] code hash {hash, attempts, sent}. ARGV: the candidate's hash,
# max attempts. Returns 'ok', 'mismatch', 'locked' or 'missing'. A matching
# code is consumed; attempts are counted even when they fail.
CHECK_CODE = Script("check_code", """
local stored = redis.call('HGET', KEYS[1], 'hash')
if not stored then return 'missing' end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if attempts >= tonumber(ARGV[2]) then return 'locked' end
if stored == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 'ok'
end
attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempts >= tonumber(ARGV[2]) then return 'locked' end
return 'mismatch'
""")
