"""A webhook receiver for the tests: a real HTTP server on 127.0.0.1 (a thread) that records every
POST (path, headers, body, and whether its Standard Webhooks signature verifies with svix's
`Webhook.verify` under the receiver's secret) and answers what a test scripts: a status per
request in turn (then 200), or a hang (no answer until the test ends, or `hang_s`).

    with run_receiver() as receiver:
        receiver.answer(503, 200)       # the first POST gets 503, the next 200, the rest 200
        receiver.hang(1)                # the next one hangs (until released)
        receiver.requests[0].json(), receiver.requests[0].verified
"""

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from svix.webhooks import Webhook, WebhookVerificationError

RECEIVER_SECRET = "whsec_dGVzdC13ZWJob29rLXJlY2VpdmVyLWtleQ=="
HANG = -1  # an answer that never comes (until the receiver is reset or stopped)


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: str
    verified: bool | None  # None: it carried no signature

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def id(self) -> str:
        return self.headers.get("webhook-id", "")


@dataclass
class WebhookReceiver:
    url: str = ""
    secret: str = RECEIVER_SECRET
    requests: list[Received] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, *statuses: int) -> None:
        """The statuses of the next requests, in turn (HANG: no answer); then 200."""
        with self.lock:
            self.script.extend(statuses)

    def hang(self, times: int = 1) -> None:
        self.answer(*[HANG] * times)

    def reset(self) -> None:
        """Nothing recorded, nothing scripted; a hanging request is let go."""
        self.released.set()
        with self.lock:
            self.requests.clear()
            self.script.clear()
        self.released = threading.Event()

    def ids(self) -> list[str]:
        return [request.id for request in self.requests]

    def receive(self, path: str, headers: dict[str, str], body: str) -> int:
        """Record one POST; the status to answer (HANG: none)."""
        with self.lock:
            self.requests.append(Received(path, headers, body, self.verify(headers, body)))
            return self.script.pop(0) if self.script else 200

    def verify(self, headers: dict[str, str], body: str) -> bool | None:
        if "webhook-signature" not in headers:
            return None
        try:
            Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError:
            return False
        return True


def _handler(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
            headers = {name.lower(): value for name, value in self.headers.items()}
            status = receiver.receive(self.path, headers, body)
            if status == HANG:
                receiver.released.wait(30)
                return  # the connection closes with no answer
            self.send_response(status)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def run_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.released.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
