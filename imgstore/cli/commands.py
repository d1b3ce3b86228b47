"""The ``imgstore`` command: ``imgstore serve`` runs a node; every ZStack API is a command.

``imgstore login`` keeps a session; then any API of :mod:`imgstore.client.catalogue` runs by its ZStack
name with zstack-cli's ``key=value`` words (``imgstore QueryBackupStorage name~=bs%``).
Words become parameters in :mod:`imgstore.cli.words` (pure), requests are made by
:class:`imgstore.client.http.ImgstoreClient`, replies are drawn by :mod:`imgstore.cli.render`.
"""
from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, NoReturn

import typer
import typer.main
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from imgstore.cli.render import error_line, mask_text, one_line, print_json, render
from imgstore.cli.words import parse_words
from imgstore.client import catalogue as apis
from imgstore.client.catalogue import Api
from imgstore.client.http import (
    DEFAULT_URL,
    INVALID_SESSION,
    ImgstoreClient,
    ImgstoreError,
    ParamError,
    SavedSession,
    coerce_params,
    forget_session,
    guess_format,
    load_session,
    normalize_url,
    save_session,
)

USAGE_ERROR = 2
API_ERROR = 1

SYNTAX_HELP = """\b
Words are key=value; a list parameter takes comma-separated values
(systemTags=a,b; write \\, for a literal comma) or the same key again.
\b
Query conditions are field<op>value with ZStack's operators:
  =  !=  >  >=  <  <=      compare
  ?=  !?=                  in / not in a comma-separated list
  ~=  !~=                  like / not like (% and _ are wildcards)
  field is null            three words (or one quoted word)
  field not null
limit=N start=N sort=+field|-field fields=a,b count=true replyWithCount=true
page and shape the answer. Conditions are ANDed."""

HELP = f"""imgstore: VM image storage on Ceph with a ZStack-compatible API.

\b
Call any ZStack API by its name ('imgstore apis' lists them):
  imgstore login --url http://127.0.0.1:8080
  imgstore AddCephBackupStorage name=bs1 poolName=imgs \\
      monUrls=root:pw@10.0.0.1:22/?monPort=6789
  imgstore QueryBackupStorage name~=bs% limit=10 sort=-createDate
  imgstore DeleteBackupStorage uuid=<uuid>
  imgstore upload-image disk.qcow2 --backup-storage bs1

{SYNTAX_HELP}

\b
Answers are tables; --json prints the raw reply. An error is one line
on stderr; the exit code is 1 for an API error, 2 for a usage error."""


# ------------------------------------------------------------------ words → parameters

def _stdout() -> Console:
    # Piped output is not cut to 80 columns: tables stay one line per row.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 240)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


# ------------------------------------------------------------------ errors


def _fail(line: str, code: int) -> NoReturn:
    sys.stderr.write(mask_text(line) + "\n")
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except ParamError as e:
        _fail(f"error: {e}", USAGE_ERROR)
    except ImgstoreError as e:
        if e.code == INVALID_SESSION:
            e.details = f"{one_line(e.details)} (run 'imgstore login')"
        _fail(error_line(e), API_ERROR)
    except KeyboardInterrupt:
        _fail("error: interrupted", 130)


def _client(need_session: bool = True) -> ImgstoreClient:
    saved = load_session()
    if saved is None:
        if need_session:
            raise ImgstoreError(INVALID_SESSION, "Invalid or expired session", "not logged in")
        return ImgstoreClient(DEFAULT_URL)
    return ImgstoreClient(saved.url, saved.session, ca_file=saved.ca_file)


def _waiting(api: Api) -> Any:
    if api.is_async and sys.stderr.isatty():
        return _stderr().status(f"{api.name} running...")
    return nullcontext()


# ------------------------------------------------------------------ the API commands


class ApiCommand(TyperCommand):
    """One ZStack API as a command: ``imgstore <ApiName> key=value...``; help from the catalogue."""

    api: Api  # set on the per-API subclass made by api_command()

    def format_usage(self, ctx: Any, formatter: Any) -> None:
        words = "[CONDITION|key=value]..." if self.api.query else "key=value..."
        formatter.write_usage(ctx.command_path, f"{words} [--json] [--timeout SECONDS]")

    def format_help_text(self, ctx: Any, formatter: Any) -> None:
        api = self.api
        formatter.write_paragraph()
        formatter.write_text(f"{api.summary}.")
        formatter.write_paragraph()
        formatter.write_text(f"{api.method} /zstack/v1{api.path}  ({'async' if api.is_async else 'sync'})")
        if api.query:
            formatter.write_paragraph()
            for line in SYNTAX_HELP.splitlines()[1:]:
                formatter.write(f"  {line}\n" if line != "\b" else "\n")
        if api.params:
            rows = []
            for p in api.params:
                kind = p.kind + (f" ({'|'.join(p.choices)})" if p.choices else "")
                rows.append((p.name + (" *" if p.required else ""), f"{kind}  {p.help}".rstrip()))
            with formatter.section("Parameters (* = required)"):
                formatter.write_dl(rows)


def api_command(api: Api) -> Any:
    """A Typer command for ``api``, built the way Typer builds its own commands."""

    def run(
        words: list[str] = typer.Argument(None, metavar="WORDS", show_default=False, hidden=True),
        as_json: bool = typer.Option(False, "--json", help="Print the raw JSON reply."),
        timeout: float = typer.Option(None, "--timeout", metavar="SECONDS",
                                      help="How long to wait for an async job (default 3 h)."),
    ) -> None:
        call_api(api, words or [], as_json, timeout)

    sub = typer.Typer(rich_markup_mode=None, add_completion=False)  # plain help: monUrl brackets stay
    sub.command(api.name, help=api.summary, cls=type(f"{api.name}Command", (ApiCommand,), {"api": api}))(run)
    return typer.main.get_command(sub)


def call_api(api: Api, words: Sequence[str], as_json: bool, timeout: float | None) -> None:
    with _errors():
        params = parse_words(api, words)
        with _client(need_session=api.session) as client, _waiting(api):
            reply = client.call(api.name, job_timeout=timeout, **params)
    render(_stdout(), api, reply, as_json, params.get("fields"))


class ApiGroup(TyperGroup):
    """The command group: its own commands, then every API of the catalogue by name."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        try:
            return api_command(apis.get(cmd_name))
        except apis.UnknownApi:
            return None

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            near = apis.closest(name) or difflib.get_close_matches(name, list(self.commands), n=1)
            hint = f"; did you mean {' or '.join(near)}?" if near else ""
            _fail(f"error: unknown command or API '{name}'{hint} ('imgstore apis' lists the APIs)", USAGE_ERROR)
        return super().resolve_command(ctx, args)


app = typer.Typer(cls=ApiGroup, help=HELP, no_args_is_help=True)


@app.callback()
def main() -> None:
    """imgstore commands."""


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             add_help_option=False)
def serve(ctx: typer.Context) -> None:
    """Run the API server: becomes `python -m imgstore.server` with the same arguments
    (`imgstore serve --help` lists them), a process without the command line's modules."""
    os.execv(sys.executable, [sys.executable, "-m", "imgstore.server", *ctx.args])


# ------------------------------------------------------------------ sessions


@app.command()
def login(
    url: str = typer.Option(None, help=f"the server (default: the last one used, else {DEFAULT_URL})",
                            envvar="IMGSTORE_URL"),
    account: str = typer.Option("admin", help="account name"),
    password: str = typer.Option(None, help="the account's password (prompted for when not given)",
                                 envvar="IMGSTORE_PASSWORD", show_envvar=True),
    ca_file: Path = typer.Option(None, help="check an https server's certificate against this CA file "
                                 "(kept for later commands)", envvar="IMGSTORE_CA_FILE"),
) -> None:
    """Log in and keep the session in $XDG_CONFIG_HOME/imgstore/session.json (mode 0600)."""
    saved = load_session()
    url = normalize_url(url or (saved.url if saved else DEFAULT_URL))
    ca = str(ca_file.resolve()) if ca_file else None
    if password is None:
        password = typer.prompt("Password", hide_input=True)
    with _errors(), ImgstoreClient(url, ca_file=ca) as client:
        session = client.login(account, password)
        path = save_session(SavedSession(url=url, session=session["uuid"], account=account, ca_file=ca))
    expires = f", expires {session['expiredDate']}" if session.get("expiredDate") else ""
    _stdout().print(Text(f"Logged in to {url} as {account}{expires} (session in {path})."))


@app.command()
def logout() -> None:
    """End the session and forget it."""
    saved = load_session()
    if saved is None:
        _stdout().print("Not logged in.")
        return
    try:
        with ImgstoreClient(saved.url, saved.session, ca_file=saved.ca_file) as client:
            client.logout()
    except ImgstoreError as e:
        sys.stderr.write(f"warning: {mask_text(error_line(e))}; the local session is forgotten anyway\n")
    forget_session()
    _stdout().print(Text(f"Logged out of {saved.url}."))


# ------------------------------------------------------------------ the catalogue


@app.command("apis")
def list_apis(
    match: str = typer.Argument("", help="show only APIs whose name or group contains this"),
    as_json: bool = typer.Option(False, "--json", help="print the catalogue as JSON"),
) -> None:
    """List the ZStack APIs this CLI can call, with their method and path."""
    found = [a for a in apis.APIS.values() if match.lower() in (a.name + " " + a.group).lower()]
    if as_json:
        print_json(_stdout(), [
            {"name": a.name, "method": a.method, "path": f"/zstack/v1{a.path}", "bodyKey": a.body_key,
             "async": a.is_async, "query": a.query, "replyKey": a.reply_key,
             "params": [{"name": p.name, "kind": p.kind, "required": p.required} for p in a.params]}
            for a in found])
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("API", "group", "method", "path", "mode", "what it does"):
        table.add_column(column, no_wrap=column in ("API", "path"))
    for a in found:
        table.add_row(a.name, a.group, a.method, f"/zstack/v1{a.path}", "async" if a.is_async else "sync",
                      Text(a.summary))
    _stdout().print(table)


# ------------------------------------------------------------------ images


@app.command("upload-image")
def upload_image(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="the image file"),
    backup_storage: str = typer.Option(..., "--backup-storage", "-b", help="name or uuid of the backup storage"),
    name: str = typer.Option(None, help="image name (default: the file name without its extension)"),
    format: str = typer.Option(None, "--format", help="qcow2, raw, vmdk or iso (default: from the file's bytes)"),
    media_type: str = typer.Option(None, help="RootVolumeTemplate, ISO or DataVolumeTemplate"),
    platform: str = typer.Option(None, help="Linux, Windows, Other, Paravirtualization or WindowsVirtio"),
    architecture: str = typer.Option(None, help="x86_64, aarch64, mips64el or loongarch64"),
    description: str = typer.Option(None, help="image description"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="wait until the image is Ready"),
    as_json: bool = typer.Option(False, "--json", help="print the image inventory as JSON"),
) -> None:
    """Upload a local image file to a backup storage, with a progress bar."""
    fmt = format or guess_format(file)
    extra = {"mediaType": media_type or ("ISO" if fmt == "iso" else None), "platform": platform,
             "architecture": architecture, "description": description}
    with _errors(), _client() as client:
        coerce_params(apis.get("AddImage"), {"name": "x", "url": "upload://", "backupStorageUuids": "x",
                                             "format": fmt, **extra})  # usage errors before any upload
        bs_uuid = backup_storage_uuid(client, backup_storage)
        image = send_image(client, file, bs_uuid, name or file.name.split(".")[0], fmt, extra)
        if wait:
            with _stderr().status("waiting for the image to be Ready..."):
                image = client.wait_image(image["uuid"])
    render(_stdout(), apis.get("AddImage"), {"inventory": image}, as_json)


def backup_storage_uuid(client: ImgstoreClient, ref: str) -> str:
    """The uuid of the backup storage named (or with the uuid) ``ref``."""
    if re.fullmatch(r"[0-9a-fA-F]{32}", ref):
        if client.query("QueryBackupStorage", [f"uuid={ref}"], fields="uuid")["inventories"]:
            return ref
    found = client.query("QueryBackupStorage", [f"name={ref}"], fields="uuid")["inventories"]
    if not found:
        raise ImgstoreError("SYS.1003", "A resource can not be found", f"no backup storage is named '{ref}'")
    if len(found) > 1:
        raise ParamError(f"{len(found)} backup storages are named '{ref}'; give the uuid")
    uuid: str = found[0]["uuid"]
    return uuid


def send_image(client: ImgstoreClient, file: Path, bs_uuid: str, name: str, fmt: str,
               extra: dict[str, Any]) -> dict[str, Any]:
    """AddImage(upload://) then the bytes, with a rich progress bar on stderr."""
    from rich.markup import escape
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    console = _stderr()
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeRemainingColumn(), console=console,
                        disable=not console.is_terminal)
    task = progress.add_task(escape(file.name), total=file.stat().st_size)

    def advance(n: int) -> None:  # the bar appears once the server has said where to send
        progress.start()
        progress.advance(task, n)

    try:
        return client.upload_image(file, [bs_uuid], name=name, format=fmt, on_progress=advance,
                                   **{k: v for k, v in extra.items() if v is not None})
    finally:
        progress.stop()

if __name__ == "__main__":
    app()
