"""``sitq dashboard``: serve the dashboard with uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import secrets
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import click

from sitq.commands import db_option, fail, import_modules, import_option, open_database
from sitq.dashboard.access import is_loopback
from sitq.display import redact

TOKEN_ENV = "SITQ_DASHBOARD_TOKEN"


@click.command()
@db_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; anything but loopback needs a token.",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port."
)
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    default=None,
    help=f"Access token every request must carry (or ${TOKEN_ENV}), at least 16 characters; "
    "'generate' makes one.",
)
@click.option(
    "--refresh",
    type=click.FloatRange(min=0.5),
    default=2.0,
    show_default=True,
    help="Seconds between live updates of an open page.",
)
@import_option(
    "so task pages can load the tasks' arguments and results; the current directory "
    "is importable, as for `sitq worker`"
)
def dashboard(
    db: str, host: str, port: int, token: str | None, refresh: float, imports: tuple[str, ...]
) -> None:
    """Serve the web dashboard: queues, workers, failures, retry and cancel."""
    try:
        import uvicorn

        from sitq.dashboard.app import DashboardConfig, create_app
    except ImportError as exc:
        fail(
            f"the dashboard needs its extra ({exc.name} is missing): pip install 'sitq[dashboard]'"
        )
    if token == "generate":
        token = secrets.token_urlsafe(24)
    if token is not None and len(token) < 16:
        raise click.BadParameter("use at least 16 characters (or 'generate')", param_hint="--token")
    if token is None and not is_loopback(host):
        raise click.UsageError(
            f"listening on {host} would let other machines in: give a token with --token "
            f"(or ${TOKEN_ENV}; '--token generate' makes one), or keep --host 127.0.0.1"
        )
    import_modules(imports, "dashboard")
    open_database(db)  # a wrong path or URL is one clear line, not a failed startup
    # Bound here, before anything is announced, and handed to uvicorn: a busy
    # port is then one clear line, not a URL followed by uvicorn's raw error.
    listener = _bind(host, port)
    port = int(listener.getsockname()[1])  # the real one when --port 0
    config = DashboardConfig(db=db, token=token, host=host, port=port, refresh_seconds=refresh)
    app = create_app(config)
    server = _server_class(uvicorn.Server)(
        uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    )
    url = f"http://{_shown_host(host)}:{port}/" + (f"?token={token}" if token else "")
    click.echo(f"sitq dashboard for {redact(db)} at {url}  (Ctrl-C to stop)", err=True)
    with listener:
        asyncio.run(server.serve(sockets=[listener]))
    if not server.started:
        fail(f"the dashboard could not start on {host}:{port} (see above)")
    click.echo("sitq dashboard stopped", err=True)


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a CLI error that says what to change."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        fail(f"cannot listen on {host!r}: {exc.strerror}; check --host")
    listener = socket.socket(family, kind, proto)
    try:
        # As uvicorn does: a restart may reuse the port of connections still closing.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(2048)
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            fail(
                f"port {port} is in use on {host}: pass --port N (another port), "
                "or stop what listens there"
            )
        fail(f"cannot listen on {host}:{port} ({exc.strerror}); check --host and --port")
    return listener


def _shown_host(host: str) -> str:
    """The host part of the URL to print: a wildcard address (0.0.0.0, ::) is no
    address another machine can use, so the machine's own name stands for it (or a
    placeholder, where the machine knows itself only as localhost)."""
    if host in ("0.0.0.0", "::", ""):
        names = (socket.getfqdn(), socket.gethostname())
        host = next(
            (n for n in names if n and not (is_loopback(n) or n.startswith("localhost."))),
            "<this host>",
        )
    return f"[{host}]" if ":" in host else host


def _server_class(base: Any) -> Any:
    """uvicorn's Server, except that SIGINT and SIGTERM only stop it.

    uvicorn shuts down on them and then raises the signal again, for a caller to
    act on: Ctrl-C then ends in click's ``Aborted!`` and exit 1, and SIGTERM kills
    the process without a word. The dashboard has no caller to tell, so it stops
    and says so, with exit status 0 (a second Ctrl-C still forces the exit).
    """

    class Server(base):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield  # signals reach only the main thread
                return
            stops = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in stops}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server
