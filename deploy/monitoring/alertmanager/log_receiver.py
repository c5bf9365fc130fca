"""Alertmanager's default receiver in the compose stack: print every notification as one
JSON line on stdout (``docker compose logs alert-log``). Standard library only, so it runs in
the stock python image; point Alertmanager at a real receiver for paging (alertmanager.yml)."""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
        try:
            note = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            note = {"unparsed": True}
        for alert in note.get("alerts", []) if isinstance(note, dict) else []:
            line = {
                "status": alert.get("status"),
                "labels": alert.get("labels"),
                "summary": (alert.get("annotations") or {}).get("summary"),
                "startsAt": alert.get("startsAt"),
            }
            print(json.dumps(line, sort_keys=True), flush=True)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:  # the access log would only repeat the lines above
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("PORT", "9095"))
    ThreadingHTTPServer(("0.0.0.0", port), Receiver).serve_forever()
