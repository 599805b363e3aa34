"""
The media catalogue: 000's video list (``video.php``) and the KTV song list.

Entries are flat records of strings, as the documents show them:

- a video: ``id, name, video, duration, file, cate`` (000's ``video.php``;
  002's ``watch`` looks videos up by ``id``);
- a song: ``sid, author, name, lrc, link, duration`` (002's queue entries;
  ``duration`` in seconds).

A catalogue is replaced as a whole by an import (``imserver-catalog``, see
:mod:`imserver.catalog_cli`): the new entries are written under a fresh
*generation* of keys, then one Lua call switches the served generation, so
readers never see half an import. The old generation's keys expire a minute
later rather than at once, so a reader that fetched the old generation id
just before the switch still finds its entries.

The order of the imported file is the order served; each category (``cate``)
has its own ordered index, so paging a category is a range read.

A fresh data directory has no catalogue; :meth:`Catalog.ensure_sample` fills
in the small sample shipped in ``imserver/data/sample_catalog.json`` once
(never over an import).
"""

from __future__ import annotations

import csv
import io
import json
import os
from importlib import resources
from urllib.parse import quote

from imserver.core import tunes
from imserver.core.errors import InvalidInput
from imserver.store import keys
from imserver.store.scripts import Script

VIDEO_FIELDS = ("id", "name", "video", "duration", "file", "cate")
SONG_FIELDS = ("sid", "author", "name", "lrc", "link", "duration")
KINDS = {"videos": ("id", VIDEO_FIELDS), "songs": ("sid", SONG_FIELDS)}

MAX_ITEMS = 1_000_000
MAX_ID = 64
MAX_FIELD = 4096
OLD_GENERATION_TTL = 60
_CHUNK = 200

# KEYS: current, seeded. ARGV: new generation. Switches the served
# generation; returns the previous one ('' if none).
SWITCH = Script("catalog_switch", """
local old = redis.call('GET', KEYS[1]) or ''
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], '1')
return old
""")


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        raise InvalidInput("catalogue fields are plain values")
    return str(value)


def normalize(kind: str, item) -> dict[str, str]:
    """One entry as the wire shows it: exactly the kind's fields, all strings."""
    id_field, fields = KINDS[kind]
    if not isinstance(item, dict):
        raise InvalidInput(f"a {kind[:-1]} entry must be an object")
    out = {}
    for f in fields:
        value = _text(item.get(f)).strip()
        if len(value) > MAX_FIELD:
            raise InvalidInput(f"{f} longer than {MAX_FIELD} characters")
        out[f] = value
    if not out[id_field] or len(out[id_field]) > MAX_ID:
        raise InvalidInput(f"every {kind[:-1]} needs an {id_field} of 1-{MAX_ID} characters")
    return out


def parse_items(kind: str, text: str, fmt: str) -> list[dict[str, str]]:
    """
    Entries from a JSON or CSV document. JSON: a list of objects, or an
    object with the list under ``data`` (a saved ``video.php`` reply) or
    under the kind's name (``videos``/``songs``). CSV: a header row naming
    the fields. Raises InvalidInput naming the first bad entry.
    """
    if kind not in KINDS:
        raise InvalidInput(f"unknown catalogue {kind!r}")
    if fmt == "json":
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise InvalidInput(f"not valid JSON: {e}") from None
        if isinstance(doc, dict):
            doc = doc.get(kind, doc.get("data"))
        if not isinstance(doc, list):
            raise InvalidInput(f"expected a list of entries (or {{\"{kind}\": [...]}})")
        rows = doc
    elif fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        id_field = KINDS[kind][0]
        if not reader.fieldnames or id_field not in [f.strip() for f in reader.fieldnames]:
            raise InvalidInput(f"the CSV header must name the fields, {id_field} included")
        rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
    else:
        raise InvalidInput(f"unknown format {fmt!r}")
    if len(rows) > MAX_ITEMS:
        raise InvalidInput(f"more than {MAX_ITEMS} entries")
    items = []
    for n, row in enumerate(rows, 1):
        try:
            items.append(normalize(kind, row))
        except InvalidInput as e:
            raise InvalidInput(f"entry {n}: {e.reason}") from None
    return items


def sample(base_url: str) -> dict[str, list[dict[str, str]]]:
    """
    The sample catalogue shipped with imserver; ``{base}`` in its songs is
    ``base_url`` (the server's public URL, where :mod:`imserver.core.tunes`
    serves them) and ``{duration:NAME}`` the tune's length.
    """
    text = resources.files("imserver").joinpath("data/sample_catalog.json").read_text("utf-8")
    doc = json.loads(text)

    def fill(value: str) -> str:
        value = value.replace("{base}", base_url.rstrip("/"))
        if value.startswith("{duration:") and value.endswith("}"):
            value = str(tunes.duration(value[len("{duration:"):-1]))
        return value

    return {kind: [normalize(kind, {k: fill(str(v)) for k, v in i.items()}) for i in doc[kind]]
            for kind in KINDS}


class Catalog:
    def __init__(self, store):
        self.store = store

    # -- reading --------------------------------------------------------------

    async def _generation(self, kind: str) -> str | None:
        return await self.store.execute("GET", keys.catalog_current(kind)) or None

    async def _page(self, kind: str, page: int, size: int, cate: str | None):
        gen = await self._generation(kind)
        if gen is None:
            return [], 0
        index = (keys.catalog_order(kind, gen) if cate is None
                 else keys.catalog_cate(kind, gen, quote(cate, safe="")))
        total = int(await self.store.execute("ZCARD", index) or 0)
        start = (max(page, 1) - 1) * size
        if size <= 0 or start >= total:
            return [], total
        ids = await self.store.execute("ZRANGE", index, start, start + size - 1) or []
        if not ids:
            return [], total
        raw = await self.store.execute("HMGET", keys.catalog_items(kind, gen), *ids) or []
        return [json.loads(r) for r in raw if r], total

    async def videos(self, page: int = 1, size: int = 20,
                     cate: str | None = None) -> tuple[list[dict], int]:
        """One page (1-based) of videos, optionally of one category; and the total."""
        return await self._page("videos", page, size, cate)

    async def songs(self, page: int = 1, size: int = 20) -> tuple[list[dict], int]:
        return await self._page("songs", page, size, None)

    async def _get(self, kind: str, item_id) -> dict | None:
        gen = await self._generation(kind)
        if gen is None or item_id is None:
            return None
        raw = await self.store.execute("HGET", keys.catalog_items(kind, gen), _text(item_id))
        return json.loads(raw) if raw else None

    async def get_video(self, video_id) -> dict | None:
        return await self._get("videos", video_id)

    async def get_song(self, sid) -> dict | None:
        return await self._get("songs", sid)

    # -- replacing ------------------------------------------------------------

    async def _replace(self, kind: str, items) -> int:
        entries: dict[str, dict] = {}
        id_field = KINDS[kind][0]
        for item in items:
            item = normalize(kind, item)
            entries[item[id_field]] = item  # a repeated id: the later entry, first position
        gen = os.urandom(8).hex()
        items_key, order_key = keys.catalog_items(kind, gen), keys.catalog_order(kind, gen)
        cates_key = keys.catalog_cates(kind, gen)
        flat, order, by_cate = [], [], {}
        for pos, (item_id, item) in enumerate(entries.items()):
            flat += [item_id, json.dumps(item, ensure_ascii=False, separators=(",", ":"))]
            order += [str(pos), item_id]
            if kind == "videos":
                by_cate.setdefault(item["cate"], []).extend([str(pos), item_id])
        for i in range(0, len(flat), 2 * _CHUNK):
            await self.store.execute("HSET", items_key, *flat[i:i + 2 * _CHUNK])
        for i in range(0, len(order), 2 * _CHUNK):
            await self.store.execute("ZADD", order_key, *order[i:i + 2 * _CHUNK])
        for cate, pairs in by_cate.items():
            ckey = keys.catalog_cate(kind, gen, quote(cate, safe=""))
            for i in range(0, len(pairs), 2 * _CHUNK):
                await self.store.execute("ZADD", ckey, *pairs[i:i + 2 * _CHUNK])
            await self.store.execute("SADD", cates_key, cate)
        old = await self.store.eval(SWITCH, [keys.catalog_current(kind), keys.catalog_seeded()],
                                    [gen])
        if old:
            await self._expire_generation(kind, old)
        return len(entries)

    async def _expire_generation(self, kind: str, gen: str) -> None:
        cates = await self.store.execute("SMEMBERS", keys.catalog_cates(kind, gen)) or []
        for key in ([keys.catalog_items(kind, gen), keys.catalog_order(kind, gen),
                     keys.catalog_cates(kind, gen)]
                    + [keys.catalog_cate(kind, gen, quote(c, safe="")) for c in cates]):
            await self.store.execute("EXPIRE", key, OLD_GENERATION_TTL)

    async def replace(self, kind: str, items) -> int:
        """Serve exactly these entries of ``kind`` ("videos"/"songs") from now on."""
        if kind not in KINDS:
            raise InvalidInput(f"unknown catalogue {kind!r}")
        return await self._replace(kind, items)

    async def replace_videos(self, items) -> int:
        """Serve exactly these videos from now on; returns how many (repeated ids count once)."""
        return await self._replace("videos", items)

    async def replace_songs(self, items) -> int:
        return await self._replace("songs", items)

    async def ensure_sample(self, base_url: str = "http://127.0.0.1:8080") -> bool:
        """On a fresh data directory, install the sample catalogue; True if it did."""
        if await self.store.execute("EXISTS", keys.catalog_seeded()):
            return False
        if not await self.store.execute("SET", keys.catalog_seeded(), "sample", "NX"):
            return False  # another process is doing it
        data = sample(base_url)
        for kind in KINDS:
            if await self._generation(kind) is None:
                await self._replace(kind, data[kind])
        return True
