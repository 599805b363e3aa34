"""The wallet core: refills, atomic gifts, the ledger, the anchor's gift event."""

import json

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from imserver.core.errors import InvalidInput
from imserver.core.wallet import InsufficientGold, UnknownAnchor, Wallet, whole_number
from imserver.store import keys


@pytest.fixture
def wallet(store, bus):
    return Wallet(store, bus, reactor, gold_per_unit=10)


async def _users(accounts, n=2):
    return [await accounts.register(phone=f"1380000000{i}", password="secret123")
            for i in range(n)]


def ledger_adds_up(entries: list[dict], balance: int) -> bool:
    """Oldest to newest, each entry's balance is the previous one plus its delta."""
    running = 0
    for e in reversed(entries):
        running += e["delta"]
        if e["balance"] != running:
            return False
    return running == balance


def test_whole_number():
    """Amounts are whole positive numbers; fractions, words and zero are refused."""
    assert whole_number("10", "v") == 10
    assert whole_number("10.0", "v") == 10
    assert whole_number(7, "v") == 7
    for bad in ("", "ten", "1.5", "0", "-3", "nan", "inf", None, "1e30"):
        with pytest.raises(InvalidInput):
            whole_number(bad, "v")


def test_rate_must_be_positive(store, bus):
    """A wallet with a zero rate is a configuration error."""
    with pytest.raises(ValueError):
        Wallet(store, bus, reactor, gold_per_unit=0)


class WalletTests:
    @pytest_twisted.ensureDeferred
    async def test_refill_amounts(self, wallet, accounts):
        """Only 10, 50 and 100 refill, at the configured rate; others change nothing."""
        (u, _) = await _users(accounts)
        r = await wallet.refill(u.id, "50")
        assert r.balance == 500
        assert (await wallet.refill(u.id, 10)).balance == 600
        for bad in ("20", "0", "-10", "abc", "", "1000"):
            with pytest.raises(InvalidInput):
                await wallet.refill(u.id, bad)
        assert await wallet.balance(u.id) == 600

    @pytest_twisted.ensureDeferred
    async def test_rate_is_configurable(self, store, bus, accounts):
        """gold_per_unit decides how much gold one unit of money buys."""
        (u, _) = await _users(accounts)
        w = Wallet(store, bus, reactor, gold_per_unit=3)
        assert (await w.refill(u.id, 100)).balance == 300

    @pytest_twisted.ensureDeferred
    async def test_gift_moves_gold(self, wallet, accounts):
        """A gift moves exactly its value from sender to anchor."""
        a, b = await _users(accounts)
        await wallet.refill(a.id, 10)
        r = await wallet.send_gift(a, b.id, "30", "rose")
        assert r.balance == 70
        assert await wallet.balance(a.id) == 70
        assert await wallet.balance(b.id) == 30

    @pytest_twisted.ensureDeferred
    async def test_gift_refused_when_short(self, wallet, accounts):
        """A gift larger than the balance is refused and moves nothing."""
        a, b = await _users(accounts)
        await wallet.refill(a.id, 10)
        with pytest.raises(InsufficientGold):
            await wallet.send_gift(a, b.id, 101, "car")
        assert await wallet.balance(a.id) == 100
        assert await wallet.balance(b.id) == 0
        assert len(await wallet.ledger(a.id)) == 1

    @pytest_twisted.ensureDeferred
    async def test_gift_checks(self, wallet, accounts):
        """No gifts to oneself, to unknown users, of bad values or overlong descriptions."""
        a, b = await _users(accounts)
        await wallet.refill(a.id, 100)
        with pytest.raises(InvalidInput):
            await wallet.send_gift(a, a.id, 1, "")
        with pytest.raises(UnknownAnchor):
            await wallet.send_gift(a, 999999, 1, "")
        for bad in ("0", "-5", "1.5", "x"):
            with pytest.raises(InvalidInput):
                await wallet.send_gift(a, b.id, bad, "")
        with pytest.raises(InvalidInput):
            await wallet.send_gift(a, b.id, 1, "x" * 201)
        assert await wallet.balance(a.id) == 1000

    @pytest_twisted.ensureDeferred
    async def test_concurrent_gifts_never_overspend(self, wallet, accounts):
        """100 concurrent gifts against gold for 50: exactly 50 succeed, the ledger adds up."""
        a, b = await _users(accounts)
        await wallet.refill(a.id, 50)  # 500 gold = 50 gifts of 10

        async def gift():
            try:
                await wallet.send_gift(a, b.id, 10, "star")
                return True
            except InsufficientGold:
                return False

        results = await defer.gatherResults(
            [defer.ensureDeferred(gift()) for _ in range(100)])
        assert results.count(True) == 50
        assert await wallet.balance(a.id) == 0
        assert await wallet.balance(b.id) == 500
        ledger_a = await wallet.ledger(a.id, limit=500)
        ledger_b = await wallet.ledger(b.id, limit=500)
        assert len(ledger_a) == 51 and len(ledger_b) == 50
        assert all(e["balance"] >= 0 for e in ledger_a)
        assert ledger_adds_up(ledger_a, 0)
        assert ledger_adds_up(ledger_b, 500)

    @pytest_twisted.ensureDeferred
    async def test_ledger_entries(self, wallet, accounts):
        """Entries say who, whom, amount, description, time and the balances after."""
        a, b = await _users(accounts)
        await wallet.refill(a.id, 100)
        await wallet.send_gift(a, b.id, 25, "玫瑰")
        newest, refill = await wallet.ledger(a.id)
        assert refill["kind"] == "refill" and refill["from"] is None and refill["to"] == a.id
        assert refill["amount"] == 1000 and refill["money"] == 100 and refill["balance"] == 1000
        assert newest["kind"] == "gift" and newest["from"] == a.id and newest["to"] == b.id
        assert newest["amount"] == 25 and newest["description"] == "玫瑰"
        assert newest["from_balance"] == 975 and newest["to_balance"] == 25
        assert newest["delta"] == -25 and newest["balance"] == 975
        assert abs(newest["time"] - reactor.seconds()) < 60
        (incoming,) = await wallet.ledger(b.id)
        assert incoming["id"] == newest["id"] and incoming["delta"] == 25
        assert incoming["balance"] == 25
        # paging
        assert [e["id"] for e in await wallet.ledger(a.id, offset=1, limit=1)] == [refill["id"]]
        assert await wallet.ledger(a.id, offset=10 ** 30, limit=10 ** 30) == []

    @pytest_twisted.ensureDeferred
    async def test_anchor_gets_gift_event(self, wallet, accounts, bus):
        """The anchor's topic user:<id> receives gift.received with the gift."""
        a, b = await _users(accounts)
        got = defer.Deferred()
        await bus.listen(f"user:{b.id}", lambda e: got.called or got.callback(e)).ready
        await wallet.refill(a.id, 10)
        r = await wallet.send_gift(a, b.id, 5, "kiss")
        got.addTimeout(5, reactor)
        event = await got
        assert event.kind == "gift.received"
        assert event.data["from"] == a.id and event.data["to"] == b.id
        assert event.data["value"] == 5 and event.data["description"] == "kiss"
        assert event.data["id"] == r.entry_id

    @pytest_twisted.ensureDeferred
    async def test_balance_is_a_plain_integer_in_redis(self, wallet, accounts, store):
        """The balance is one integer key (other tools can read it)."""
        (u, _) = await _users(accounts)
        await wallet.refill(u.id, 10)
        assert await store.execute("GET", keys.gold(u.id)) == "100"
        raw = await store.execute("LINDEX", keys.gold_ledger(u.id), 0)
        assert json.loads(raw)["to_balance"] == 100
