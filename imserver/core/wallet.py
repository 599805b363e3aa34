"""
Gold: each user's balance, refills, gifts to anchors, and a ledger of every
movement.

Data flow. ``Wallet.refill(user_id, money)`` credits ``money * gold_per_unit``
gold (only the configured amounts, 10, 50 and 100 by default);
``Wallet.send_gift(sender, anchor_id, value, description)`` moves ``value``
gold from the sender to the anchor. Each is **one Lua script**: the balance
check, both balance changes and the ledger entries happen inside Redis in one
step, so concurrent gifts can never spend the same gold twice and a balance
never goes below zero (no read-modify-write from Python). After a gift the
anchor's topic ``user:<anchor id>`` receives a ``gift.received`` event.

State in Redis (:mod:`imserver.store.keys`, section "account"):

- ``gold(uid)``: the balance, an integer string (missing = 0);
- ``gold_ledger(uid)``: a list, newest first, of the JSON entries the user
  is part of. A gift's one entry is written to both the sender's and the
  anchor's ledger. An entry is ``{id, kind ("refill"|"gift"), from (user id,
  null for a refill), to, amount, description, time, from_balance,
  to_balance}`` (balances after the movement; ``money`` for a refill);
- ``gold_seq()``: the entry ids.

The ledger is never trimmed: it is the record the balances can be checked
against (the sum of a user's incoming minus outgoing amounts is the balance).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from imserver.core.errors import Forbidden, InvalidInput, NotFound
from imserver.store import keys
from imserver.store.scripts import Script

REFILL_AMOUNTS = (10, 50, 100)
MAX_GIFT = 1_000_000_000
MAX_DESCRIPTION = 200
MAX_LEDGER_PAGE = 500


class InsufficientGold(Forbidden):
    reason = "not enough gold"


class UnknownAnchor(NotFound):
    reason = "user not exist"


# KEYS: gold(u), gold_ledger(u), gold_seq. ARGV: user id, gold, money,
# description, time. Credits the gold and records the entry; returns
# {balance, entry id}.
REFILL = Script("gold_refill", """
local balance = redis.call('INCRBY', KEYS[1], ARGV[2])
local id = redis.call('INCR', KEYS[3])
local entry = cjson.encode({id = id, kind = 'refill', from = cjson.null,
  to = tonumber(ARGV[1]), amount = tonumber(ARGV[2]), money = tonumber(ARGV[3]),
  description = ARGV[4], time = tonumber(ARGV[5]), to_balance = balance})
redis.call('LPUSH', KEYS[2], entry)
return {balance, id}
""")

# KEYS: gold(sender), gold(anchor), gold_ledger(sender), gold_ledger(anchor),
# gold_seq, user(anchor). ARGV: sender id, anchor id, value, description,
# time. Moves the gold only if the sender has enough and the anchor exists.
# Returns {'ok', sender balance, anchor balance, entry id}, {'short',
# balance} or {'nouser'}.
GIFT = Script("gold_gift", """
if redis.call('EXISTS', KEYS[6]) == 0 then return {'nouser'} end
local value = tonumber(ARGV[3])
local balance = tonumber(redis.call('GET', KEYS[1]) or '0')
if balance < value then return {'short', balance} end
local from_balance = redis.call('DECRBY', KEYS[1], value)
local to_balance = redis.call('INCRBY', KEYS[2], value)
local id = redis.call('INCR', KEYS[5])
local entry = cjson.encode({id = id, kind = 'gift', from = tonumber(ARGV[1]),
  to = tonumber(ARGV[2]), amount = value, description = ARGV[4],
  time = tonumber(ARGV[5]), from_balance = from_balance, to_balance = to_balance})
redis.call('LPUSH', KEYS[3], entry)
redis.call('LPUSH', KEYS[4], entry)
return {'ok', from_balance, to_balance, id}
""")


@dataclass(frozen=True)
class Receipt:
    """The outcome of a movement: the entry's id and the caller's balance after it."""
    entry_id: int
    balance: int


def whole_number(value, what: str, *, low: int = 1, high: int = MAX_GIFT) -> int:
    """``"10"``, ``10``, ``"10.0"`` -> 10; anything else (or out of range) is refused."""
    text = str(value if value is not None else "").strip()
    try:
        number = float(text)
    except ValueError:
        raise InvalidInput(f"{what} must be a whole number") from None
    if not number.is_integer() or not low <= number <= high:
        raise InvalidInput(f"{what} must be a whole number from {low} to {high}")
    return int(number)


class Wallet:
    def __init__(self, store, bus, clock, *, gold_per_unit: int = 10,
                 refill_amounts=REFILL_AMOUNTS):
        if gold_per_unit <= 0:
            raise ValueError("gold_per_unit must be positive")
        self.store = store
        self.bus = bus
        self.clock = clock
        self.gold_per_unit = gold_per_unit
        self.refill_amounts = tuple(refill_amounts)

    async def balance(self, user_id: int) -> int:
        return int(await self.store.execute("GET", keys.gold(int(user_id))) or 0)

    async def refill(self, user_id: int, money) -> Receipt:
        """Credit ``money`` (one of the refill amounts) at the configured rate."""
        amount = whole_number(money, "money", high=max(self.refill_amounts))
        if amount not in self.refill_amounts:
            raise InvalidInput("money must be one of "
                               + ", ".join(str(a) for a in self.refill_amounts))
        uid = int(user_id)
        gold = amount * self.gold_per_unit
        balance, entry_id = await self.store.eval(
            REFILL, keys=[keys.gold(uid), keys.gold_ledger(uid), keys.gold_seq()],
            args=[uid, gold, amount, f"refill {amount}", repr(self.clock.seconds())])
        return Receipt(int(entry_id), int(balance))

    async def send_gift(self, sender, anchor_id: int, value, description: str = "") -> Receipt:
        """Move ``value`` gold from ``sender`` (a User) to the anchor, atomically.

        Raises :class:`InsufficientGold` when the sender's balance is short,
        :class:`UnknownAnchor` when the anchor does not exist, and
        ``InvalidInput`` for a bad value or a gift to oneself.
        """
        value = whole_number(value, "value")
        anchor = int(anchor_id)
        if anchor == sender.id:
            raise InvalidInput("a gift to oneself is not allowed")
        description = str(description or "").strip()
        if len(description) > MAX_DESCRIPTION:
            raise InvalidInput(f"description is longer than {MAX_DESCRIPTION} characters")
        now = self.clock.seconds()
        result = await self.store.eval(
            GIFT, keys=[keys.gold(sender.id), keys.gold(anchor), keys.gold_ledger(sender.id),
                        keys.gold_ledger(anchor), keys.gold_seq(), keys.user(anchor)],
            args=[sender.id, anchor, value, description, repr(now)])
        if result[0] == "nouser":
            raise UnknownAnchor()
        if result[0] == "short":
            raise InsufficientGold()
        _, from_balance, _, entry_id = result
        await self.bus.publish(f"user:{anchor}", "gift.received", {
            "id": int(entry_id), "from": sender.id, "from_phone": sender.phone or "",
            "from_nickname": sender.nickname, "to": anchor, "value": value,
            "description": description, "time": now})
        return Receipt(int(entry_id), int(from_balance))

    async def ledger(self, user_id: int, offset: int = 0, limit: int = 50) -> list[dict]:
        """The user's entries, newest first; each adds ``delta`` (the change to
        this user's balance) and ``balance`` (this user's balance after it)."""
        uid = int(user_id)
        offset = max(0, min(int(offset), 10 ** 12))  # Redis indexes are 64-bit
        limit = max(1, min(int(limit), MAX_LEDGER_PAGE))
        raw = await self.store.execute("LRANGE", keys.gold_ledger(uid), offset,
                                       offset + limit - 1) or []
        entries = []
        for text in raw:
            entry = json.loads(text)
            incoming = entry.get("to") == uid
            entry["delta"] = entry["amount"] if incoming else -entry["amount"]
            entry["balance"] = entry["to_balance"] if incoming else entry["from_balance"]
            entries.append(entry)
        return entries


__all__ = ["Wallet", "Receipt", "InsufficientGold", "UnknownAnchor", "REFILL_AMOUNTS",
           "whole_number"]
