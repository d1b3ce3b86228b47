"""The server process: ``python -m imgstore.server [--host H] [--port N] ...``.

``imgstore serve`` becomes this process (``os.execv``), so a server never carries the
command line's own modules: typer, click, rich and the client's API catalogue (their
share of the idle RSS is in the README's bench_images row). Settings come from
``IMGSTORE_*`` variables (:mod:`imgstore.config`); migrations are applied on start.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# httpx imports its command line (rich, pygments, click) whenever they are
# installed, as they are here for imgstore's own; a None entry makes that import fail,
# which httpx takes as "no CLI" (its __init__ catches the ImportError)
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import uvicorn  # noqa: E402 - after the entry above

from imgstore import logs, memory  # noqa: E402
from imgstore.app import create_app  # noqa: E402
from imgstore.config import Settings  # noqa: E402
from imgstore.http_protocol import with_header_timeout  # noqa: E402

__all__ = ["listen_url", "main"]


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="imgstore serve", description="Run the imgstore API server (settings "
                                 "from IMGSTORE_* variables; migrations applied on start).")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    ap.add_argument("--port", type=int, default=8080, help="port to listen on (default: %(default)s)")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ap.add_argument("--ssl-certfile", type=Path, default=os.environ.get("IMGSTORE_SSL_CERTFILE") or None,
                    help="serve https with this certificate (PEM, chain first) [env IMGSTORE_SSL_CERTFILE]")
    ap.add_argument("--ssl-keyfile", type=Path, default=os.environ.get("IMGSTORE_SSL_KEYFILE") or None,
                    help="the certificate's private key (PEM) [env IMGSTORE_SSL_KEYFILE]")
    args = ap.parse_args(argv)
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        ap.error("--ssl-certfile and --ssl-keyfile go together")
    return args


def listen_url(scheme: str, host: str, port: int) -> str | None:
    """The base of stored URLs when ``public_url`` is unset; None for a wildcard address,
    where the address each connection reached stands in (api/deps.py's base_url)."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        return None
    return f"{scheme}://[{host}]:{port}/" if ":" in host else f"{scheme}://{host}:{port}/"


def main(argv: Sequence[str] | None = None) -> None:
    args = _arguments(argv)
    memory.limit_arenas()
    memory.fix_mmap_threshold()
    log_config = logs.configure(args.log_level)  # one masked JSON line per event, uvicorn's too
    settings = Settings(listen_url=listen_url("https" if args.ssl_certfile else "http", args.host, args.port))
    # uvicorn writes its access line when a response starts, before a streamed body's
    # duration is known: logs.RequestContext writes one per finished request instead
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level,
                log_config=log_config, access_log=False, proxy_headers=False,
                http=with_header_timeout(settings.header_timeout),
                timeout_keep_alive=max(1, round(settings.idle_timeout)),
                ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)


if __name__ == "__main__":
    main()
