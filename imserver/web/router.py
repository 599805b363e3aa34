"""
The site's root: a path table, not a tree.

Dialects register exact paths (``/ws/chat``, ``/auth/login``) and prefixes
(``/media/``); the router hands the request to the resource registered for it.
Klein apps see the full path (the router leaves it all in ``postpath``), so a
Klein class declares its routes with their real paths, ``/wsim/`` aliases
included, and ``add_klein`` registers them all.

A request the site refuses before any route sees it (a body over the site's
cap: 413; no route: 404) is answered in the envelope its path's clients
read. Each dialect registers its *refusal form* with its paths: a function
``(status, reason) -> JSON object``, e.g. 003's ``{"res": reason}``.
:meth:`Router.refuse` picks the form the way :meth:`Router.find` picks a
resource (exact path, then the longest prefix); a path no dialect claimed
gets ``{"error": reason}``. The HTTP status is kept.
"""

from __future__ import annotations

from typing import Callable

from twisted.web import resource
from twisted.web.resource import getChildForRequest

from imserver.web.http import json_body

#: (HTTP status, reason) -> the JSON object a dialect's clients read as a refusal
RefusalForm = Callable[[int, str], object]


def plain_refusal(status: int, reason: str) -> dict:
    """The refusal of a path no dialect claimed."""
    return {"error": reason}


class Router(resource.Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.exact: dict[str, resource.IResource] = {}
        self.prefixes: list[tuple[str, resource.IResource]] = []
        self.exact_forms: dict[str, RefusalForm] = {}
        self.prefix_forms: list[tuple[str, RefusalForm]] = []

    def add(self, path: str, res, refusal: RefusalForm | None = None) -> None:
        if path in self.exact and self.exact[path] is not res:
            raise ValueError(f"path {path} is already routed")
        self.exact[path] = res
        if refusal is not None:
            self.add_refusal(refusal, paths=[path])

    def add_prefix(self, prefix: str, res, refusal: RefusalForm | None = None) -> None:
        self.prefixes.append((prefix, res))
        self.prefixes.sort(key=lambda p: -len(p[0]))
        if refusal is not None:
            self.add_refusal(refusal, prefixes=[prefix])

    def add_klein(self, app, refusal: RefusalForm | None = None) -> None:
        """Route every path of a Klein app; ``refusal``: the form its clients read."""
        res = app.resource()
        for rule in app.url_map.iter_rules():
            path = rule.rule
            if "<" in path:
                self.add_prefix(path.split("<", 1)[0], res, refusal)
            else:
                self.add(path, res, refusal)
                if path != "/" and path.endswith("/"):
                    self.add(path.rstrip("/"), res, refusal)

    def add_refusal(self, refusal: RefusalForm, *, paths=(), prefixes=()) -> None:
        """Refusals on ``paths`` and below ``prefixes`` take the form ``refusal``."""
        for path in paths:
            if self.exact_forms.get(path, refusal) is not refusal:
                raise ValueError(f"path {path} already has a refusal form")
            self.exact_forms[path] = refusal
        for prefix in prefixes:
            self.prefix_forms.append((prefix, refusal))
        self.prefix_forms.sort(key=lambda p: -len(p[0]))

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

    def refusal_form(self, path: str) -> RefusalForm:
        form = self.exact_forms.get(path)
        if form is None and path.endswith("/") and path != "/":
            form = self.exact_forms.get(path.rstrip("/"))
        if form is not None:
            return form
        for prefix, form in self.prefix_forms:
            if path.startswith(prefix):
                return form
        return plain_refusal

    def refuse(self, request, status: int, reason: str) -> bytes:
        """Answer ``request`` with ``status`` in its path's refusal form."""
        path = request.path.decode("utf-8", "replace")
        return json_body(request, self.refusal_form(path)(status, reason), status)

    def render(self, request):
        path = request.path.decode("utf-8", "replace")
        res, prefix = self.find(path)
        if res is None:
            return self.refuse(request, 404, "not found")
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

    def refuse(self, request, status: int, reason: str) -> bytes:
        return json_body(request, plain_refusal(status, reason), status)
