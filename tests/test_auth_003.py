"""Document 003's /auth endpoints over real HTTP, GET and POST alike."""

import pytest_twisted


async def register(http, url, tel="13800000001", name="alice", pw="secret1", method="get"):
    params = {"user_tel": tel, "user_name": name, "user_password": pw}
    if method == "get":
        return await http.get_json(url + "/auth/register", params=params)
    return await http.post_json(url + "/auth/register", data=params)


@pytest_twisted.ensureDeferred
async def test_register_then_login_get_and_post(server, http):
    """Register by GET, log in by POST form and by JSON: document's res strings, token, id."""
    code, body = await register(http, server.url)
    assert (code, body) == (200, {"res": "register successfully"})
    code, body = await http.post_json(server.url + "/auth/login",
                                      data={"user_tel": "13800000001", "user_password": "secret1"})
    assert body["res"] == "login successfully"
    data = body["data"]
    assert data["user_tel"] == 13800000001 and data["user_name"] == "alice"
    assert data["user_avatar_url"] == "default"
    assert isinstance(data["user_id"], int) and len(data["token"]) >= 40
    assert "user_password" not in data
    code, body = await http.post_json(server.url + "/auth/login",
                                      json_body={"user_tel": "13800000001",
                                                 "user_password": "secret1"})
    assert body["res"] == "login successfully"
    user = await server.core.accounts.user_for_token(body["data"]["token"])
    assert user.id == data["user_id"]


@pytest_twisted.ensureDeferred
async def test_register_duplicate_and_missing(server, http):
    """A taken phone or name gives `user exist`; a missing field `missing parameters`."""
    await register(http, server.url)
    assert (await register(http, server.url, method="post"))[1] == {"res": "user exist"}
    assert (await register(http, server.url, tel="13800000002"))[1] == {"res": "user exist"}
    _, body = await http.get_json(server.url + "/auth/register",
                                  params={"user_tel": "1", "user_name": "x"})
    assert body == {"res": "missing parameters"}


@pytest_twisted.ensureDeferred
async def test_login_failures(server, http):
    """Unknown user and wrong password have the document's res and an empty data."""
    await register(http, server.url)
    _, body = await http.get_json(server.url + "/auth/login",
                                  params={"user_tel": "13900000000", "user_password": "x"})
    assert body == {"res": "user not exist", "data": {}}
    _, body = await http.get_json(server.url + "/auth/login",
                                  params={"user_tel": "13800000001", "user_password": "bad"})
    assert body == {"res": "password wrong", "data": {}}
    _, body = await http.get_json(server.url + "/auth/login", params={"user_tel": "1"})
    assert body == {"res": "missing parameters", "data": {}}


@pytest_twisted.ensureDeferred
async def test_repeated_failures_are_slowed(server, http):
    """After ten wrong passwords for one phone, even the right one is refused for a while."""
    await register(http, server.url)
    for _ in range(10):
        await http.get_json(server.url + "/auth/login",
                            params={"user_tel": "13800000001", "user_password": "bad"})
    _, body = await http.get_json(server.url + "/auth/login",
                                  params={"user_tel": "13800000001", "user_password": "secret1"})
    assert body == {"res": "too many attempts", "data": {}}
