"""
Accounts: users, passwords, login tokens and SMS verification codes.

One account system serves every dialect. A user has a numeric id and
optionally a unique phone and a unique username (case-insensitive), plus a
nickname, avatar, gender and the profile fields of 000's ``userinfo``.

- Passwords are stored only as argon2id hashes, hashed and verified in a
  thread (``blocking``), never on the reactor thread.
- Tokens are 256-bit random strings handed to the client; Redis only holds
  their SHA-256, with the expiry, so a Redis dump does not hold live tokens.
  ``user_for_token`` is the one lookup every dialect uses.
- SMS codes are 4 digits, kept as a keyed hash with a short expiry; each
  phone has a limited number of attempts and resends are throttled per phone
  and per address. The code is sent through a pluggable sender.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from imserver.core.errors import (Conflict, InvalidInput, NotFound, RateLimited,
                                  Unauthorized)
from imserver.store import keys
from imserver.store.scripts import CHECK_CODE, CREATE_USER

PROFILE_FIELDS = ("email", "wechat", "qq", "age")
EDITABLE = ("nickname", "avatar", "gender") + PROFILE_FIELDS
FIRST_USER_ID = 10000


class DuplicatePhone(Conflict):
    reason = "phone already registered"


class DuplicateUsername(Conflict):
    reason = "username already taken"


class UnknownUser(NotFound):
    reason = "user not exist"


class WrongPassword(Unauthorized):
    reason = "password wrong"


class Throttled(RateLimited):
    reason = "a code was sent too recently"


class CodeMismatch(InvalidInput):
    reason = "wrong code"


class CodeLocked(RateLimited):
    reason = "too many wrong codes"


class CodeExpired(InvalidInput):
    reason = "no valid code for this phone"


@dataclass
class User:
    id: int
    phone: str | None = None
    username: str | None = None
    nickname: str = ""
    avatar: str = ""
    gender: str = ""
    profile: dict = field(default_factory=dict)
    level: str = "user"
    created: float = 0.0

    @property
    def display_name(self) -> str:
        return self.nickname or self.username or self.phone or str(self.id)

    @classmethod
    def from_hash(cls, uid: int, h: dict) -> "User":
        return cls(
            id=uid,
            phone=h.get("phone") or None,
            username=h.get("username") or None,
            nickname=h.get("nickname", ""),
            avatar=h.get("avatar", ""),
            gender=h.get("gender", ""),
            profile={k: h[k] for k in PROFILE_FIELDS if h.get(k)},
            level=h.get("level", "user"),
            created=float(h.get("created") or 0),
        )


@dataclass
class Token:
    token: str
    user_id: int
    expires_at: float


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts:
    def __init__(self, store, clock, blocking, sms_sender, *, token_max_age=30 * 86400,
                 sms_echo=False, argon2_time_cost=2, argon2_memory_cost=19 * 1024,
                 code_ttl=300, code_attempts=5, resend_interval=60, codes_per_hour=10,
                 limits=None):
        """
        ``blocking(fn, *args)`` runs ``fn`` off the reactor thread and returns
        a Deferred (``deferToThreadPool`` bound to a pool).
        """
        self.store = store
        self.clock = clock
        self.blocking = blocking
        self.sms = sms_sender
        self.limits = limits
        self.token_max_age = token_max_age
        self.sms_echo = sms_echo
        self.hasher = PasswordHasher(time_cost=argon2_time_cost,
                                     memory_cost=argon2_memory_cost, parallelism=1)
        self.code_ttl = code_ttl
        self.code_attempts = code_attempts
        self.resend_interval = resend_interval
        self.codes_per_hour = codes_per_hour
        self._code_secret: bytes | None = None
        self._dummy_hash: str | None = None

    # -- users ---------------------------------------------------------------

    async def register(self, *, password: str, phone: str | None = None,
                       username: str | None = None, nickname: str = "", avatar: str = "",
                       gender: str = "", profile: dict | None = None,
                       level: str = "user") -> User:
        if not password or len(password) > 256:
            raise InvalidInput("password must be 1 to 256 characters")
        phone = (phone or "").strip() or None
        username = (username or "").strip() or None
        if phone is None and username is None:
            raise InvalidInput("a phone or a username is required")
        if phone and await self.store.execute("HEXISTS", keys.phone_index(), phone):
            raise DuplicatePhone()
        if username and await self.store.execute("HEXISTS", keys.username_index(),
                                                 username.lower()):
            raise DuplicateUsername()
        pw_hash = await self.blocking(self.hasher.hash, password)
        uid = await self._next_id()
        record = {
            "phone": phone or "", "username": username or "", "nickname": nickname or "",
            "avatar": avatar or "", "gender": gender or "", "level": level,
            "created": repr(self.clock.seconds()), "pw": pw_hash,
        }
        for k, v in (profile or {}).items():
            if k in PROFILE_FIELDS:
                record[k] = str(v)
        args = [uid, phone or "", username or ""]
        for k, v in record.items():
            args += [k, v]
        result = int(await self.store.eval(
            CREATE_USER, [keys.user(uid), keys.phone_index(), keys.username_index()], args))
        if result == 1:
            raise DuplicatePhone()
        if result == 2:
            raise DuplicateUsername()
        return User.from_hash(uid, record)

    async def _next_id(self) -> int:
        await self.store.execute("SETNX", keys.user_seq(), FIRST_USER_ID)
        return int(await self.store.execute("INCR", keys.user_seq()))

    async def get(self, user_id) -> User | None:
        try:
            uid = int(user_id)
        except (TypeError, ValueError):
            return None
        h = await self.store.hgetall(keys.user(uid))
        return User.from_hash(uid, h) if h else None

    async def get_many(self, user_ids) -> dict[int, User]:
        found = {}
        for uid in {int(u) for u in user_ids}:
            u = await self.get(uid)
            if u is not None:
                found[uid] = u
        return found

    async def id_for_phone(self, phone: str) -> int | None:
        uid = await self.store.execute("HGET", keys.phone_index(), phone or "")
        return int(uid) if uid else None

    async def get_by_phone(self, phone: str) -> User | None:
        uid = await self.id_for_phone(phone)
        return await self.get(uid) if uid else None

    async def get_by_username(self, username: str) -> User | None:
        uid = await self.store.execute("HGET", keys.username_index(), (username or "").lower())
        return await self.get(uid) if uid else None

    async def update_profile(self, user_id: int, **fields) -> User:
        unknown = set(fields) - set(EDITABLE)
        if unknown:
            raise InvalidInput("unknown profile field " + ", ".join(sorted(unknown)))
        if not await self.store.execute("EXISTS", keys.user(user_id)):
            raise UnknownUser()
        args = []
        for k, v in fields.items():
            args += [k, "" if v is None else str(v)]
        if args:
            await self.store.execute("HSET", keys.user(user_id), *args)
        return await self.get(user_id)

    async def set_level(self, user_id: int, level: str) -> None:
        if level not in ("user", "admin"):
            raise InvalidInput("level must be user or admin")
        await self.store.execute("HSET", keys.user(user_id), "level", level)

    async def set_password(self, user_id: int, password: str) -> None:
        pw_hash = await self.blocking(self.hasher.hash, password)
        await self.store.execute("HSET", keys.user(user_id), "pw", pw_hash)

    async def authenticate(self, *, password: str, phone: str | None = None,
                           username: str | None = None, user_id=None) -> User:
        if phone:
            uid = await self.id_for_phone(phone)
        elif username:
            uid = await self.store.execute("HGET", keys.username_index(), username.lower())
        else:
            uid = user_id
        stored = await self.store.execute("HGET", keys.user(uid), "pw") if uid else None
        if not stored:
            # spend the same time as a real check, so timing does not reveal users
            await self.blocking(self._verify_dummy, password or "")
            raise UnknownUser()
        if not await self.blocking(self._verify, stored, password or ""):
            raise WrongPassword()
        return await self.get(uid)

    def _verify_dummy(self, password: str) -> bool:
        # in the worker thread, like every argon2 call: hashing the dummy costs as much
        if self._dummy_hash is None:
            self._dummy_hash = self.hasher.hash(secrets.token_hex(8))
        return self._verify(self._dummy_hash, password)

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    # -- tokens --------------------------------------------------------------

    async def issue_token(self, user_id: int, expire_in=None) -> Token:
        try:
            ttl = int(float(expire_in)) if expire_in not in (None, "") else self.token_max_age
        except (TypeError, ValueError):
            ttl = self.token_max_age
        ttl = max(1, min(ttl, self.token_max_age))
        token = secrets.token_urlsafe(32)
        th = _token_hash(token)
        expires_at = self.clock.seconds() + ttl
        # the expiry is checked against our clock; Redis's EX only collects garbage
        await self.store.execute("SET", keys.token(th), f"{int(user_id)}:{expires_at!r}",
                                 "EX", ttl + 60)
        await self.store.execute("SADD", keys.user_tokens(user_id), th)
        await self.store.execute("EXPIRE", keys.user_tokens(user_id), self.token_max_age)
        return Token(token, int(user_id), expires_at)

    async def user_for_token(self, token) -> User | None:
        if not token or not isinstance(token, str) or len(token) > 200:
            return None
        value = await self.store.execute("GET", keys.token(_token_hash(token)))
        if not value:
            return None
        uid, _, expires_at = value.partition(":")
        if self.clock.seconds() >= float(expires_at):
            return None
        return await self.get(uid)

    async def revoke_token(self, token) -> None:
        if not token or not isinstance(token, str):
            return
        th = _token_hash(token)
        value = await self.store.execute("GET", keys.token(th))
        await self.store.execute("DEL", keys.token(th))
        if value:
            uid = value.partition(":")[0]
            await self.store.execute("SREM", keys.user_tokens(uid), th)

    async def revoke_all(self, user_id: int) -> None:
        hashes = await self.store.execute("SMEMBERS", keys.user_tokens(user_id)) or []
        for th in hashes:
            await self.store.execute("DEL", keys.token(th))
        await self.store.execute("DEL", keys.user_tokens(user_id))

    # -- SMS codes -----------------------------------------------------------

    async def _secret(self) -> bytes:
        if self._code_secret is None:
            key = keys.sms_secret()
            await self.store.execute("SETNX", key, secrets.token_hex(32))
            self._code_secret = (await self.store.execute("GET", key)).encode()
        return self._code_secret

    async def _code_hash(self, phone: str, code: str) -> str:
        return hmac.new(await self._secret(), f"{phone}:{code}".encode(),
                        hashlib.sha256).hexdigest()

    async def request_code(self, phone: str, address: str | None = None) -> None:
        phone = (phone or "").strip()
        if not phone.isdigit() or not 5 <= len(phone) <= 20:
            raise InvalidInput("invalid phone number")
        throttle = keys.sms_throttle(phone)
        if not await self.store.execute("SET", throttle, "1", "NX", "EX", self.resend_interval):
            raise Throttled()
        if self.limits is not None:
            if not await self.limits.allow("sms-phone", phone, self.codes_per_hour, 3600):
                raise Throttled("too many codes for this phone; try again later")
            if address and not await self.limits.allow("sms-addr", address,
                                                       self.codes_per_hour * 3, 3600):
                raise Throttled("too many codes from this address; try again later")
        code = f"{secrets.randbelow(10000):04d}"
        key = keys.sms_code(phone)
        await self.store.execute("DEL", key)
        await self.store.execute("HSET", key, "hash", await self._code_hash(phone, code),
                                 "attempts", 0, "sent", repr(self.clock.seconds()))
        await self.store.execute("EXPIRE", key, self.code_ttl)
        if self.sms_echo:
            await self.store.execute("SET", keys.sms_echo(phone), code, "EX", self.code_ttl)
        try:
            await self.sms.send(phone, code)
        except Exception:
            await self.store.execute("DEL", key, throttle)
            raise

    async def verify_code(self, phone: str, code) -> None:
        phone = (phone or "").strip()
        code = str(code or "").strip()
        result = await self.store.eval(
            CHECK_CODE, [keys.sms_code(phone)],
            [await self._code_hash(phone, code), self.code_attempts])
        if result == "ok":
            await self.store.execute("SET", keys.sms_verified(phone),
                                     repr(self.clock.seconds()), "EX", 3600)
            return
        if result == "locked":
            raise CodeLocked()
        if result == "missing":
            raise CodeExpired()
        raise CodeMismatch()

    async def phone_verified(self, phone: str, within: float = 300) -> bool:
        when = await self.store.execute("GET", keys.sms_verified((phone or "").strip()))
        return bool(when) and self.clock.seconds() - float(when) <= within

    async def consume_verification(self, phone: str) -> None:
        await self.store.execute("DEL", keys.sms_verified(phone))

    async def last_sent_code(self, phone: str) -> str | None:
        if not self.sms_echo:
            return None
        return await self.store.execute("GET", keys.sms_echo(phone))


def public_profile(user: User) -> dict:
    """The fields any dialect may show about a user (never the password)."""
    return {"user_id": user.id, "phone": user.phone or "", "username": user.username or "",
            "nickname": user.nickname, "avatar": user.avatar, "gender": user.gender,
            "level": user.level, **user.profile}


__all__ = ["Accounts", "User", "Token", "DuplicatePhone", "DuplicateUsername",
           "UnknownUser", "WrongPassword", "Throttled", "CodeMismatch", "CodeLocked",
           "CodeExpired", "public_profile"]
