"""The accounts core against a real Redis: users, passwords, tokens, SMS codes."""

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, reactor
from twisted.internet.task import Clock
from twisted.web import resource, server

import treq
from imserver.core.accounts import (Accounts, CodeExpired, CodeLocked, CodeMismatch,
                                    DuplicatePhone, DuplicateUsername, Throttled,
                                    UnknownUser, WrongPassword)
from imserver.core.errors import InvalidInput
from imserver.core.sms import HttpSender, LogSender, SmsSendFailed
from imserver.store import keys
from tests.conftest import FAST_ARGON2, blocking


@pytest_twisted.ensureDeferred
async def test_register_and_authenticate(accounts, store):
    """A user logs in by phone or username; the stored password is an argon2 hash."""
    user = await accounts.register(phone="13800000001", username="Alice", password="pw123456",
                                   nickname="A", profile={"email": "a@example.com"})
    assert user.id >= 10001
    assert (await accounts.authenticate(phone="13800000001", password="pw123456")).id == user.id
    assert (await accounts.authenticate(username="alice", password="pw123456")).id == user.id
    stored = await store.execute("HGET", keys.user(user.id), "pw")
    assert stored.startswith("$argon2id$") and "pw123456" not in stored
    again = await accounts.get(user.id)
    assert again.profile == {"email": "a@example.com"} and again.nickname == "A"


@pytest_twisted.ensureDeferred
async def test_duplicates_refused(accounts):
    """A phone or a username (any case) cannot be registered twice."""
    await accounts.register(phone="13800000001", username="alice", password="x")
    with pytest.raises(DuplicatePhone):
        await accounts.register(phone="13800000001", username="bob", password="x")
    with pytest.raises(DuplicateUsername):
        await accounts.register(phone="13800000002", username="ALICE", password="x")
    with pytest.raises(InvalidInput):
        await accounts.register(password="x")


@pytest_twisted.ensureDeferred
async def test_concurrent_registrations_one_wins(accounts):
    """Ten simultaneous registrations of one phone create exactly one user."""
    results = await defer.DeferredList(
        [defer.ensureDeferred(accounts.register(phone="13800000009", password="x"))
         for _ in range(10)], consumeErrors=True)
    assert sum(1 for ok, _ in results if ok) == 1


@pytest_twisted.ensureDeferred
async def test_wrong_password_and_unknown_user(accounts):
    """Wrong password and unknown user are told apart, and nothing changes."""
    await accounts.register(phone="13800000001", password="right")
    with pytest.raises(WrongPassword):
        await accounts.authenticate(phone="13800000001", password="wrong")
    with pytest.raises(UnknownUser):
        await accounts.authenticate(phone="13900000000", password="right")


@pytest_twisted.ensureDeferred
async def test_token_expiry_and_revocation(store, limits):
    """A token works until its expire_in (capped by the maximum) and after revocation no more."""
    clock = Clock()
    clock.advance(1000)
    accounts = Accounts(store, clock, blocking, LogSender(), token_max_age=3600,
                        limits=limits, **FAST_ARGON2)
    user = await accounts.register(phone="13800000001", password="x")
    short = await accounts.issue_token(user.id, expire_in="60")
    capped = await accounts.issue_token(user.id, expire_in=10 ** 9)
    assert capped.expires_at == 1000 + 3600
    assert (await accounts.user_for_token(short.token)).id == user.id
    clock.advance(61)
    assert await accounts.user_for_token(short.token) is None
    assert (await accounts.user_for_token(capped.token)).id == user.id
    await accounts.revoke_token(capped.token)
    assert await accounts.user_for_token(capped.token) is None
    assert await accounts.user_for_token("") is None
    assert await accounts.user_for_token("x" * 500) is None


@pytest_twisted.ensureDeferred
async def test_tokens_are_stored_hashed(accounts, store):
    """Redis holds only a hash of the token, never the token itself."""
    user = await accounts.register(phone="13800000001", password="x")
    tok = await accounts.issue_token(user.id)
    all_keys = await store.execute("KEYS", "im:token:*")
    assert all_keys and all(tok.token not in k for k in all_keys)


@pytest_twisted.ensureDeferred
async def test_sms_code_verify_and_lock(accounts, store):
    """A right code verifies once; five wrong ones lock it even for the right code."""
    await accounts.request_code("13800000001")
    code = await accounts.last_sent_code("13800000001")
    assert len(code) == 4 and code.isdigit()
    stored = await store.hgetall(keys.sms_code("13800000001"))
    assert code not in stored.values()
    await accounts.verify_code("13800000001", code)
    assert await accounts.phone_verified("13800000001")
    with pytest.raises(CodeExpired):
        await accounts.verify_code("13800000001", code)  # consumed

    await store.execute("DEL", "im:sms:throttle:13800000002")
    await accounts.request_code("13800000002")
    code = await accounts.last_sent_code("13800000002")
    wrong = f"{(int(code) + 1) % 10000:04d}"
    for _ in range(4):
        with pytest.raises(CodeMismatch):
            await accounts.verify_code("13800000002", wrong)
    with pytest.raises(CodeLocked):
        await accounts.verify_code("13800000002", wrong)
    with pytest.raises(CodeLocked):
        await accounts.verify_code("13800000002", code)
    assert not await accounts.phone_verified("13800000002")


@pytest_twisted.ensureDeferred
async def test_resend_throttled(accounts):
    """A second code for the same phone within the resend interval is refused."""
    await accounts.request_code("13800000001")
    with pytest.raises(Throttled):
        await accounts.request_code("13800000001")
    with pytest.raises(InvalidInput):
        await accounts.request_code("not-a-phone")


@pytest_twisted.ensureDeferred
async def test_codes_not_echoed_without_sms_echo(store, limits):
    """Without --sms-echo no code can be read back from anywhere."""
    accounts = Accounts(store, reactor, blocking, LogSender(), limits=limits, **FAST_ARGON2)
    await accounts.request_code("13800000001")
    assert await accounts.last_sent_code("13800000001") is None
    assert await store.execute("KEYS", "im:sms:echo:*") == []


class _Gateway(resource.Resource):
    isLeaf = True

    def __init__(self, status=200):
        super().__init__()
        self.status = status
        self.received = []

    def render_POST(self, request):
        self.received.append({k.decode(): v[0].decode() for k, v in request.args.items()})
        request.setResponseCode(self.status)
        return b"ok"


@pytest_twisted.ensureDeferred
async def test_http_sms_sender_posts_to_gateway(store, limits):
    """The http sender POSTs phone and code to the gateway; a gateway error is an error."""
    gateway = _Gateway()
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        server.Site(gateway))
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/send"
        accounts = Accounts(store, reactor, blocking, HttpSender(url, treq), sms_echo=True,
                            limits=limits, **FAST_ARGON2)
        await accounts.request_code("13800000001")
        assert gateway.received == [{"phone": "13800000001",
                                     "code": await accounts.last_sent_code("13800000001")}]
        gateway.status = 500
        with pytest.raises(SmsSendFailed):
            await accounts.request_code("13800000002")
        # a failed send does not hold the throttle: the user may retry at once
        gateway.status = 200
        await accounts.request_code("13800000002")
    finally:
        await port.stopListening()
