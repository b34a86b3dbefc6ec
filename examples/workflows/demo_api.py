"""A stand-in for the HTTP API that api_requests.yaml and parallel_processing.yaml
call, so that they run without the internet: ``python demo_api.py [PORT]``.

- ``GET /users/NAME`` answers ``{"id": NAME, "name": NAME.upper()}`` when the
  request carries ``Authorization: Bearer demo-token``, else 401;
- ``GET /PATH`` (any other path) answers ``{"path": "/PATH"}`` after 0.2 s, as
  a slow page would.

It listens on 127.0.0.1 (port 8780 unless given: 8765 is the dashboard's) until
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "demo-token"


class Handler(BaseHTTPRequestHandler):
    """Answers the two kinds of request above with JSON."""

    def do_GET(self) -> None:
        if self.path.startswith("/users/"):
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._send(401, {"error": "missing or wrong bearer token"})
                return
            user = self.path.rsplit("/", 1)[-1]
            self._send(200, {"id": user, "name": user.upper()})
            return
        time.sleep(0.2)
        self._send(200, {"path": self.path})

    def _send(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    """Serve until Ctrl-C or SIGTERM."""
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8780
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"demo API listening on http://127.0.0.1:{port} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
