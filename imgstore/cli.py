"""The ``imgstore`` command: ``imgstore serve`` runs a node."""
from __future__ import annotations

import logging

import typer
import uvicorn

app = typer.Typer(help="imgstore: VM image storage on Ceph with a ZStack-compatible API.", no_args_is_help=True)


@app.callback()
def main() -> None:
    """imgstore commands."""


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8080, help="port to listen on"),
    log_level: str = typer.Option("info", help="debug, info, warning or error"),
) -> None:
    """Run the API server (settings from IMGSTORE_* variables; migrations applied on start)."""
    from imgstore.app import create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(), host=host, port=port, log_level=log_level, proxy_headers=False)


if __name__ == "__main__":
    app()
