"""
``imserver-catalog``: import a video or song catalogue from a JSON or CSV file.

    imserver-catalog [--data-dir DIR | --redis URL] videos FILE [--format json|csv]
    imserver-catalog [--data-dir DIR | --redis URL] songs FILE

The import replaces the whole catalogue of that kind (the sample one
included) in one switch; a running server serves the new one at once. With
``--data-dir`` it uses that directory's embedded Redis: the running server's
if it answers on the directory's socket, otherwise it starts the
redis-server itself for the import and stops it afterwards.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

from twisted.internet import defer, task

from imserver.core.catalog import KINDS, Catalog, parse_items
from imserver.core.errors import InvalidInput


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imserver-catalog",
        description="Replace imserver's video list (000 video.php, 002 watch) or song list"
                    " (002 sing/listen) with the entries of a JSON or CSV file.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--data-dir", default=os.environ.get("IMSERVER_DATA_DIR", "imserver-data"),
                       help="the server's data directory (its embedded Redis) [%(default)s]")
    where.add_argument("--redis", default=os.environ.get("IMSERVER_REDIS") or None,
                       help="an external Redis: redis://host:port/db or unix:///path.sock?db=N")
    p.add_argument("kind", choices=sorted(KINDS),
                   help="videos: id,name,video,duration,file,cate;"
                        " songs: sid,author,name,lrc,link,duration")
    p.add_argument("file", help="a JSON list of objects (or {\"videos\": [...]}, or a saved"
                                " video.php reply) or a CSV file with a header row; - for stdin")
    p.add_argument("--format", choices=("json", "csv"),
                   help="default: from the file name, else json")
    return p


def _format(path: str, given: str | None) -> str:
    if given:
        return given
    return "csv" if path.lower().endswith(".csv") else "json"


async def _run(reactor, args) -> int:
    from imserver.store.embedded import EmbeddedRedis, ping_unix
    from imserver.store.redis import Store

    if args.file == "-":
        text = sys.stdin.read()
    else:
        text = pathlib.Path(args.file).read_text("utf-8-sig")
    items = parse_items(args.kind, text, _format(args.file, args.format))

    embedded = None
    url = args.redis
    if url is None:
        embedded = EmbeddedRedis(reactor, pathlib.Path(args.data_dir))
        url = embedded.url
        try:
            running = await ping_unix(reactor, embedded.socket) == b"+PONG"
        except Exception:
            running = False
        if running:
            embedded = None  # the server's own: leave it running
        else:
            await embedded.start()
    store = Store(reactor, url)
    try:
        await store.ping()
        count = await Catalog(store).replace(args.kind, items)
    finally:
        await store.close()
        if embedded is not None:
            await embedded.stop()
    print(f"imported {count} {args.kind}")
    return 0


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)

    async def run(reactor):
        try:
            code = await _run(reactor, args)
        except InvalidInput as e:
            sys.stderr.write(f"imserver-catalog: {args.file}: {e.reason}\n")
            code = 1
        except OSError as e:
            sys.stderr.write(f"imserver-catalog: {e}\n")
            code = 1
        except Exception as e:
            sys.stderr.write(f"imserver-catalog: error: {e}\n")
            code = 1
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
