"""
Document 001's wire format, pure: result codes, the reply envelope, the flag
fields that select an operation, input checks, and the shapes of users,
friends, friend-request messages and ledger entries.

Every reply is ``{"result": "<4 digits>", "message": …}`` plus, for some
operations, top-level extras (``user_id`` after a login, ``flag`` after a
search, ``gold`` after a refill or a gift). ``message`` is always present
(``null`` where the document says None); a few original replies used
``mes`` and clients read ``message``, so only ``message`` is sent.
"""

from __future__ import annotations

import re

# -- result codes (docs/account.rst lists them) ---------------------------------
OK = "0000"
PHONE_TAKEN = "0001"        # 该手机号已被注册
OTHER_ERROR = "0002"        # 其他错误 (code sending failed or throttled)
CODE_WRONG = "0004"         # 验证码错误 (also: no valid code, phone not verified)
CODE_LOCKED = "0005"        # 验证码错误次数过多
UNKNOWN_ERROR = "0006"      # 未知错误 (refused upload, invalid registration, not friends)
NO_USER = "0007"            # 用户不存在
WRONG_PASSWORD = "0008"     # 密码错误
BAD_REQUEST = "0009"        # API错误，bad request (no operation, bad parameters, stream provider)
ALREADY_FRIENDS = "0010"    # 已经互为好友
UPDATE_FAILED = "0013"      # 数据库更新错误
# new in imserver (not in the document; the document's gaps 0003, 0011, 0012 stay unused)
NOT_ENOUGH_GOLD = "0014"    # the sender's balance does not cover the gift
BAD_TOKEN = "0015"          # missing, unknown, expired or revoked token
TOO_MANY = "0016"           # too many attempts or requests; try again later

PHONE = re.compile(r"^[0-9]{11}$")
MAX_NICKNAME = 64
MAX_PASSWORD = 128
MAX_AVATAR = 512
MAX_TITLE = 200


def reply(result: str, message=None, **extra) -> dict:
    """The envelope of every reply."""
    return {"result": result, "message": message, **extra}


class Refused(Exception):
    """A request answered with a non-zero result code."""

    def __init__(self, result: str, message=None, **extra):
        super().__init__(result)
        self.result = result
        self.message = message
        self.extra = extra

    def reply(self) -> dict:
        return reply(self.result, self.message, **self.extra)


def flag(params, name: str) -> bool:
    """A flag field (``register=1``, ``live=1`` …): set unless empty, 0 or false."""
    return (params.get(name) or "").strip().lower() not in ("", "0", "false", "no", "none")


def operation(params, names) -> str | None:
    """The first of the flag ``names`` set in ``params``."""
    for name in names:
        if flag(params, name):
            return name
    return None


def no_operation(names) -> Refused:
    return Refused(BAD_REQUEST, "no operation: send one of "
                   + ", ".join(f"{n}=1" for n in names))


def is_phone(text: str) -> bool:
    return bool(PHONE.match(text or ""))


def password_problem(password: str) -> str | None:
    """Why ``password`` is not acceptable (at least 8 characters with both
    letters and digits), or None."""
    if len(password) < 8:
        return "password must have at least 8 characters"
    if len(password) > MAX_PASSWORD:
        return f"password must have at most {MAX_PASSWORD} characters"
    if not any(c.isdigit() for c in password) or not any(c.isalpha() for c in password):
        return "password must contain letters and digits"
    return None


def avatar_problem(url: str) -> str | None:
    """``headImage`` is the path or URL ``/upload`` returned (or another
    http(s) picture): never a script URL or control characters."""
    if not url:
        return None
    if len(url) > MAX_AVATAR or any(ord(c) < 32 for c in url):
        return "headImage is not a valid picture path"
    lowered = url.lower()
    if not (lowered.startswith(("http://", "https://")) or url.startswith("/")):
        return "headImage must be the path /upload returned or an http(s) URL"
    return None


def split_ref(ref: str) -> tuple[str, int | None]:
    """``verifyId``/``objectId`` ``"<phone>,<timestamp>"`` -> (phone, ts or None)."""
    who, _, ts = (ref or "").replace("，", ",").partition(",")
    ts = ts.strip()
    return who.strip(), int(ts) if ts.isdigit() and len(ts) < 19 else None


def account_name(user) -> str:
    """001's ``userId``: the phone, or the numeric id for users without one."""
    return user.phone or str(user.id)


def user_info(user) -> dict:
    """A user as search results show it (never a password or hash)."""
    return {"userId": account_name(user), "user_id": user.id, "nickname": user.nickname,
            "headImage": user.avatar, "gender": user.gender}


def friend_entry(user, live: bool, play_url: str) -> dict:
    """ORIGINALS.md: ``{userId, headImage, gender, nickname, liveStatus, playUrl}``."""
    return {"userId": account_name(user), "user_id": user.id, "headImage": user.avatar,
            "gender": user.gender, "nickname": user.nickname,
            "liveStatus": 1 if live else 0, "playUrl": play_url or ""}


def friend_message(request, requester, requestee) -> dict:
    """One friend-request message as its viewer sees it (``flag`` 0/1 to the
    requestee, 2/3 to the requester); ``verifyId`` and ``objectId`` are what
    ``dealMessage`` takes back."""
    other = requestee if request.mine else requester
    return {
        "userId": account_name(other), "user_id": other.id, "nickname": other.nickname,
        "headImage": other.avatar, "gender": other.gender, "flag": request.flag,
        "time": request.ts, "verifyId": f"{account_name(requester)},{request.ts}",
        "objectId": f"{account_name(requestee)},{request.ts}",
    }


def ledger_entry(entry: dict, names: dict[int, str]) -> dict:
    """A ledger entry with the parties' 001 ``userId`` added."""
    out = dict(entry)
    out["fromUserId"] = names.get(entry.get("from"), "") if entry.get("from") else ""
    out["toUserId"] = names.get(entry.get("to"), "")
    return out
