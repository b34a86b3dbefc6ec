"""Helpers for the workflow tests: the CLI as a real process, and a local HTTP server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from support import TESTS_DIR, subprocess_env

ROOT = TESTS_DIR.parent
WORKFLOW_EXAMPLES = ROOT / "examples" / "workflows"
#: Bounds a hang; not an expected duration.
CLI_TIMEOUT = 120.0


def workflow_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment for `python -m sitq.workflow`: runs recorded in a fresh sitq
    database under tmp_path ($SITQ_DB, unless ``extra`` names another)."""
    env = subprocess_env()
    env["SITQ_DB"] = str(tmp_path / "sitq.db")
    env.update(extra)
    return env


def workflow_cmd(*args: str) -> list[str]:
    """The command line of `sitq workflow ARGS` (through `python -m`)."""
    return [sys.executable, "-m", "sitq.workflow", *args]


def run_cli(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run `sitq workflow ARGS` to its end."""
    return subprocess.run(
        workflow_cmd(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def run_id_of(output: str) -> str:
    """The run id the CLI prints first."""
    match = re.search(r"^(?:run|resuming) (\S+) \(items run", output, re.M)
    assert match, f"no run id in:\n{output}"
    return match.group(1)


def status_json(run_id: str, cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    """`sitq workflow status RUN_ID --json`, parsed."""
    proc = run_cli("status", run_id, "--json", cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def items_of(status: dict[str, Any], step: str) -> list[dict[str, Any]]:
    """The items of ``step`` in a status report."""
    return next(s for s in status["steps"] if s["name"] == step)["items"]


class LocalHTTPServer:
    """A real HTTP server on 127.0.0.1 in a thread, recording every request.

    ``respond(method, path, headers, body)`` returns (status, JSON-able body).
    """

    def __init__(
        self, respond: Callable[[str, str, dict[str, str], bytes], tuple[int, Any]]
    ) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = dict(self.headers.items())
                with server.lock:
                    server.requests.append(
                        {
                            "method": self.command,
                            "path": self.path,
                            "headers": headers,
                            "body": body,
                        }
                    )
                status, payload = respond(self.command, self.path, headers, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> LocalHTTPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
