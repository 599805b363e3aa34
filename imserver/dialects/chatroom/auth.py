"""
Document 003's account endpoints: ``/auth/register``, ``/auth/login`` and
the original server's ``/auth/user_data``.

The original clients called them with GET and query parameters; POST with a
form, multipart or JSON body works the same (``ORIGINALS.md``). Replies are
the document's ``res`` strings; a missing field gives ``missing parameters``.
Deviations (``spec/README.md``): login never returns ``user_password``; it
adds ``data.token`` (valid in every dialect) and ``data.user_id``. Repeated
failed logins for one phone or from one address are refused for a while
with ``res`` ``too many attempts``.
"""

from klein import Klein

from imserver import metrics
from imserver.core.accounts import DuplicatePhone, DuplicateUsername, UnknownUser, WrongPassword
from imserver.core.errors import InvalidInput
from imserver.web.http import client_address, json_body, read_params

LOGIN_FAILURES = 10       # per phone and per address
LOGIN_WINDOW = 300        # seconds


def tel_value(phone: str | None):
    """The document shows ``user_tel`` as a number; keep strings that aren't plain numbers."""
    if phone and phone.isdigit() and not phone.startswith("0") and len(phone) < 16:
        return int(phone)
    return phone or ""


def user_data(user) -> dict:
    """003's user object (never the password)."""
    return {"user_tel": tel_value(user.phone), "user_name": user.username or "",
            "user_avatar_url": user.avatar or "default"}


class AuthApi:
    app = Klein()

    def __init__(self, accounts, limits, max_body: int):
        self.accounts = accounts
        self.limits = limits
        self.max_body = max_body

    def _reply(self, request, obj):
        metrics.HTTP_REQUESTS.labels("chatroom").inc()
        return json_body(request, obj)

    @app.route("/auth/register", methods=["GET", "POST"])
    async def register(self, request):
        try:
            p = await read_params(request, self.max_body)
        except InvalidInput as e:
            return self._reply(request, {"res": e.reason})
        tel, name, password = (p.get("user_tel", "").strip(), p.get("user_name", "").strip(),
                               p.get("user_password", ""))
        if not tel or not name or not password:
            return self._reply(request, {"res": "missing parameters"})
        if not tel.isdigit() or len(tel) > 20:
            return self._reply(request, {"res": "invalid user_tel"})
        if len(name) > 64 or len(password) > 128:
            return self._reply(request, {"res": "invalid parameters"})
        try:
            await self.accounts.register(phone=tel, username=name, password=password)
        except (DuplicatePhone, DuplicateUsername):
            return self._reply(request, {"res": "user exist"})
        return self._reply(request, {"res": "register successfully"})

    @app.route("/auth/login", methods=["GET", "POST"])
    async def login(self, request):
        try:
            p = await read_params(request, self.max_body)
        except InvalidInput as e:
            return self._reply(request, {"res": e.reason, "data": {}})
        tel, password = p.get("user_tel", "").strip(), p.get("user_password", "")
        if not tel or not password:
            return self._reply(request, {"res": "missing parameters", "data": {}})
        address = client_address(request)
        if (await self.limits.peek("login-fail-phone", tel, LOGIN_WINDOW) >= LOGIN_FAILURES
                or await self.limits.peek("login-fail-addr", address, LOGIN_WINDOW)
                >= LOGIN_FAILURES * 5):
            return self._reply(request, {"res": "too many attempts", "data": {}})
        try:
            user = await self.accounts.authenticate(phone=tel, password=password)
        except (UnknownUser, WrongPassword) as e:
            await self.limits.count("login-fail-phone", tel, LOGIN_WINDOW)
            await self.limits.count("login-fail-addr", address, LOGIN_WINDOW)
            return self._reply(request, {"res": e.reason, "data": {}})
        token = await self.accounts.issue_token(user.id)
        data = user_data(user)
        data.update(token=token.token, user_id=user.id)
        return self._reply(request, {"res": "login successfully", "data": data})

    @app.route("/auth/user_data", methods=["GET", "POST"])
    async def get_user_data(self, request):
        """The original's profile lookup by ``user_name`` or ``user_tel`` (never the password)."""
        try:
            p = await read_params(request, self.max_body)
        except InvalidInput as e:
            return self._reply(request, {"res": e.reason, "data": {}})
        name, tel = p.get("user_name", "").strip(), p.get("user_tel", "").strip()
        if not await self.limits.allow("user-data", client_address(request), 120, 60):
            return self._reply(request, {"res": "too many attempts", "data": {}})
        user = None
        if name and len(name) <= 64:
            user = await self.accounts.get_by_username(name)
        if user is None and tel and len(tel) <= 20:
            user = await self.accounts.get_by_phone(tel)
        if user is None:
            return self._reply(request, {"res": "user not exist", "data": {}})
        return self._reply(request, {"res": "get user data successfully",
                                     "data": {"user": user_data(user)}})
