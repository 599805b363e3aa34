"""
The site's root: a path table, not a tree.

Dialects register exact paths (``/ws/chat``, ``/auth/login``) and prefixes
(``/media/``); the router hands the request to the resource registered for it.
Klein apps see the full path (the router leaves it all in ``postpath``), so a
Klein class declares its routes with their real paths, ``/wsim/`` aliases
included, and ``add_klein`` registers them all.
"""

import json

from twisted.web import resource
from twisted.web.resource import getChildForRequest


class Router(resource.Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.exact: dict[str, resource.IResource] = {}
        self.prefixes: list[tuple[str, resource.IResource]] = []

    def add(self, path: str, res) -> None:
        if path in self.exact and self.exact[path] is not res:
            raise ValueError(f"path {path} is already routed")
        self.exact[path] = res

    def add_prefix(self, prefix: str, res) -> None:
        self.prefixes.append((prefix, res))
        self.prefixes.sort(key=lambda p: -len(p[0]))

    def add_klein(self, app) -> None:
        res = app.resource()
        for rule in app.url_map.iter_rules():
            path = rule.rule
            if "<" in path:
                self.add_prefix(path.split("<", 1)[0], res)
            else:
                self.add(path, res)
                if path != "/" and path.endswith("/"):
                    self.add(path.rstrip("/"), res)

    def find(self, path: str):
        res = self.exact.get(path)
        if res is None and path.endswith("/") and path != "/":
            res = self.exact.get(path.rstrip("/"))
        if res is not None:
            return res, None
        for prefix, res in self.prefixes:
            if path.startswith(prefix):
                return res, prefix
        return None, None

    def render(self, request):
        path = request.path.decode("utf-8", "replace")
        res, prefix = self.find(path)
        if res is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"application/json; charset=utf-8")
            return json.dumps({"error": "not found", "path": path}).encode()
        if prefix is not None and not hasattr(res, "_app"):
            # a plain resource tree below the prefix (static files): walk it
            n = len([s for s in prefix.split("/") if s])
            request.prepath = request.postpath[:n]
            request.postpath = request.postpath[n:]
            res = getChildForRequest(res, request)
        return res.render(request)


class SingleResource(resource.Resource):
    """Serves one resource at every path (``--dialect-listen``)."""

    isLeaf = True

    def __init__(self, res):
        super().__init__()
        self.res = res

    def render(self, request):
        return self.res.render(request)
