"""A small client of a running `acre serve`, for the command line's `--server URL` (`ACRE_SERVER`).

Standard library only (urllib): `acre ingest`, `acre ask` and `acre store ls` send their work to the
server and print what they print locally. The API key comes from `ACRE_API_KEY`; an `https://` URL is
checked against the system's CAs (or `SSL_CERT_FILE`).
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from acre_model.errors import AcreError


class ServerError(AcreError):
    """The server refused the request (its message), or could not be reached."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class ServerClient:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 3600.0):
        self.url = url.rstrip("/")
        if "://" not in self.url:
            raise ServerError(f"server URL {url!r} needs a scheme (http:// or https://)")
        self.api_key = api_key if api_key is not None else (os.environ.get("ACRE_API_KEY") or None)
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        """One JSON request; the decoded JSON reply, or ServerError with the server's message."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                msg = json.loads(raw)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                msg = raw.decode(errors="replace")[:300] or e.reason
            raise ServerError(f"server {self.url}: {e.code} {msg}", e.code) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServerError(f"cannot reach acre serve at {self.url}: {reason}") from None

    def ingest(self, text: str, name: str = "", collection: str | None = None) -> dict:
        body = {"text": text, "name": name}
        if collection is not None:
            body["collection"] = collection
        return self.call("POST", "/v1/documents", body)

    def ask(self, body: dict) -> dict:
        return self.call("POST", "/v1/ask", body)

    def ask_batch(self, body: dict) -> list[dict]:
        return self.call("POST", "/v1/ask/batch", body)["answers"]

    def documents(self) -> list[dict]:
        return self.call("GET", "/v1/documents")["documents"]
