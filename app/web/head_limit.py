"""How the service is served: uvicorn's httptools protocol with a bound on a request's head.

uvicorn bounds a head only on its h11 protocol (`h11_max_incomplete_event_size`); on httptools,
which it runs when installed (`uvicorn[standard]`), a header of any size is buffered whole before
the app is called, on the event loop.
`HeadLimitedHttpTools` counts the bytes of a head that has not ended yet and, past MAX_HEAD_BYTES,
answers 431 and closes the connection. (A read that also holds the end of an earlier pipelined
request is not counted: such a head is cut off one read later.) `activation serve` (the
Makefile's `run`, the Procfile's `web:`) serves with it; `app.web.gate` refuses headers over its
limit on any server.
"""

import json
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.web.errors import error_body
from app.web.gate import HEADERS_TOO_LARGE, MAX_HEADER_BYTES

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = MAX_HEADER_BYTES  # the request line and headers as received, not yet ended
PROTOCOL = "app.web.head_limit:HeadLimitedHttpTools"  # as uvicorn's `--http` takes it
_BODY = json.dumps(error_body(HEADERS_TOO_LARGE), separators=(",", ":")).encode()
REFUSAL = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_BODY), _BODY)
)


class HeadLimitedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol; a head still unfinished past MAX_HEAD_BYTES is refused."""

    in_message = False  # between the start of a request and its end
    in_head = False  # between the start of a request and the end of its headers
    begun = 0  # requests begun in the read being parsed
    head_bytes = 0  # received of the head being parsed

    def data_received(self, data: bytes) -> None:
        between = not self.in_message  # the read starts with a request, if any
        self.begun = 0
        super().data_received(data)
        # a read all of whose bytes belong to the unfinished head (no earlier request's body)
        all_head = self.begun == 0 or (self.begun == 1 and between)
        if not (self.in_head and all_head) or self.transport.is_closing():
            return
        self.head_bytes += len(data)
        if self.head_bytes > MAX_HEAD_BYTES:
            self.refuse_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_message = self.in_head = True
        self.begun += 1
        self.head_bytes = 0

    def on_headers_complete(self) -> None:
        self.in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.in_message = False
        super().on_message_complete()

    def refuse_head(self) -> None:
        logger.warning("a request's head passed %d bytes: answered 431", MAX_HEAD_BYTES)
        if self.cycle is None or self.cycle.response_complete:  # no answer under way
            self.transport.write(REFUSAL)
        self.transport.close()
