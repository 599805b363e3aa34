"""Document 004's group API through a real HTTP client, at the root and under /wsim/."""

import pytest
import pytest_twisted

_names = iter(range(10**9))


async def make_user(server, **kw):
    accounts = server.core.accounts
    kw.setdefault("username", f"h{next(_names)}")
    user = await accounts.register(password="secret1", **kw)
    token = await accounts.issue_token(user.id)
    return str(user.id), token.token


@pytest.fixture(params=["", "/wsim"])
def prefix(request):
    return request.param


class GroupApiTests:
    @pytest_twisted.ensureDeferred
    async def test_document_flow_get(self, server, http, prefix):
        """creategrp, addmembers, delmembers, editgrp, querymygrps, grpinfo as the document shows."""
        base = server.url + prefix
        a, token = await make_user(server, nickname="段思琪")
        b, _ = await make_user(server, phone="18202093751", username=None)
        c, _ = await make_user(server)
        d, _ = await make_user(server)
        code, body = await http.get_json(base + "/creategrp", params={
            "creator": a, "members": f"{a},{b},{c}", "name": "我的群", "token": token})
        assert code == 200 and body["code"] == 1 and body["message"] == "OK"
        data = body["data"]
        gid = data["groupid"]
        assert data == {"groupid": gid, "creator": a, "name": "我的群", "notice": "",
                        "snap": data["snap"], "members": [a, b, c]}
        assert gid.isdigit() and data["snap"].startswith(server.url + "/media/")
        snap = await http.get(data["snap"])
        assert snap.code == 200
        assert (await snap.content())[:3] == b"\xff\xd8\xff"      # a JPEG

        for path, params in [("/addmembers", {"groupid": gid, "members": d}),
                             ("/delmembers", {"groupid": gid, "members": c}),
                             ("/editgrp", {"groupid": gid, "notice": "xxx", "name": "xx"})]:
            code, body = await http.get_json(base + path, params=dict(params, token=token))
            assert (code, body) == (200, {"code": 1, "message": "OK"}), path

        code, body = await http.get_json(base + "/querymygrps",
                                         params={"userid": a, "token": token})
        assert body["code"] == 1
        (group,) = body["data"]
        assert (group["groupid"], group["creator"], group["name"], group["notice"]) == (
            gid, a, "xx", "xxx")
        assert group["members"] == [
            {"nickname": "段思琪", "snap": "", "userid": a},
            {"nickname": "18202093751", "snap": "", "userid": b},
            {"nickname": group["members"][2]["nickname"], "snap": "", "userid": d}]
        assert group["snap"] != data["snap"]            # membership changed: a new picture

        code, body = await http.get_json(base + "/grpinfo",
                                         params={"groupid": gid, "token": token})
        assert body["code"] == 1 and body["data"] == group

    @pytest_twisted.ensureDeferred
    async def test_android_client_form_post_code_zero(self, start_server, http):
        """The Android client: form POST with access_token; success is 0 with the option."""
        server = await start_server(signal_group_ok_code=0)
        a, token = await make_user(server)
        b, _ = await make_user(server)
        code, body = await http.post_json(server.url + "/creategrp", data={
            "creator": a, "members": b, "name": "android", "access_token": token})
        assert body["code"] == 0 and body["data"]["members"] == [a, b]
        gid = body["data"]["groupid"]
        code, body = await http.post_json(server.url + "/editgrp", data={
            "groupid": gid, "notice": "n", "access_token": token})
        assert body == {"code": 0, "message": "OK"}
        code, body = await http.post_json(server.url + "/grpinfo", data={"groupid": gid})
        assert body["code"] == -2 and body["code"] != 0

    @pytest_twisted.ensureDeferred
    async def test_json_body_and_bearer(self, server, http, prefix):
        """A JSON body and an Authorization: Bearer header work as well."""
        a, token = await make_user(server)
        code, body = await http.post_json(
            server.url + prefix + "/creategrp", json_body={"name": "j", "members": ""},
            headers={"Authorization": f"Bearer {token}"})
        assert body["code"] == 1 and body["data"]["members"] == [a]

    @pytest_twisted.ensureDeferred
    async def test_refusals(self, server, http, prefix):
        """Errors come in the same envelope with negative codes and a clear message."""
        base = server.url + prefix
        a, ta = await make_user(server)
        b, tb = await make_user(server)
        c, tc = await make_user(server)
        _, body = await http.get_json(base + "/creategrp", params={"members": b})
        assert body["code"] == -2 and "token" in body["message"]
        _, body = await http.get_json(base + "/creategrp",
                                      params={"members": b, "token": "forged"})
        assert body["code"] == -2
        _, body = await http.get_json(base + "/creategrp",
                                      params={"creator": b, "members": a, "token": ta})
        assert body["code"] == -3 and "creator" in body["message"]
        _, body = await http.get_json(base + "/creategrp",
                                      params={"members": "424242", "token": ta})
        assert body["code"] == -1 and "424242" in body["message"]
        _, body = await http.get_json(base + "/creategrp",
                                      params={"members": "x,y", "token": ta})
        assert body["code"] == -1
        _, body = await http.get_json(base + "/creategrp",
                                      params={"members": b, "name": "g", "token": ta})
        gid = body["data"]["groupid"]
        cases = [
            ("/grpinfo", {"groupid": gid, "token": tc}, -3),          # not a member
            ("/grpinfo", {"groupid": "999999", "token": ta}, -4),     # no such group
            ("/grpinfo", {"token": ta}, -1),                          # groupid missing
            ("/addmembers", {"groupid": gid, "members": c, "token": tc}, -3),
            ("/addmembers", {"groupid": gid, "token": ta}, -1),
            ("/delmembers", {"groupid": gid, "members": a, "token": tb}, -3),
            ("/editgrp", {"groupid": gid, "name": "mine", "token": tb}, -3),
            ("/editgrp", {"groupid": gid, "token": ta}, -1),
            ("/querymygrps", {"userid": b, "token": ta}, -3),
        ]
        for path, params, want in cases:
            code, body = await http.get_json(base + path, params=params)
            assert code == 200 and body["code"] == want and body["message"], (path, body)
        # a member leaves by removing themselves
        _, body = await http.get_json(base + "/delmembers",
                                      params={"groupid": gid, "members": b, "token": tb})
        assert body["code"] == 1
        _, body = await http.get_json(base + "/querymygrps", params={"token": tb})
        assert body == {"code": 1, "message": "OK", "data": []}

    @pytest_twisted.ensureDeferred
    async def test_body_too_large(self, start_server, http):
        """An oversized body is refused with 413 in the envelope."""
        server = await start_server(max_body=1024)
        a, token = await make_user(server)
        r = await http.post(server.url + "/creategrp",
                            data={"name": "x" * 4096, "access_token": token})
        assert r.code == 413
        assert (await r.json())["code"] == -1
