"""A fake OpenAI-compatible chat server on 127.0.0.1 for tests: replies come from a Python function."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAI:
    """`reply(messages, model)` returns one of
    - a str: the assistant's reply (HTTP 200);
    - an int: that HTTP error status, with an OpenAI-style JSON error body;
    - {"status": int, "headers": {...}, "body": obj}: an error with these headers and JSON body (status 200
      with a body that has no `choices` is a malformed reply);
    - {"status": int, "raw": str, "headers": {...}}: this body sent as it is, not as JSON (a proxy's HTML page,
      a cut-off reply), with Content-Type text/html unless the headers say otherwise;
    - ("sleep", seconds, answer): any of the above, after a delay (to make the client time out);
    - {"choice": {...}}: HTTP 200 with this whole `choices[0]` object (message, logprobs, ...).

    It speaks HTTP/1.1 keep-alive, and records for each request its JSON body (`requests`), its
    Authorization header (`auth_headers`), its arrival time (`times`, time.monotonic) and the client's
    port (`client_ports`: one per TCP connection, so distinct ports = connections opened).
    """

    def __init__(self, reply: Callable):
        self.reply = reply
        self.requests: list[dict] = []
        self.auth_headers: list[str | None] = []
        self.times: list[float] = []
        self.client_ports: list[int] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep connections open between requests, as real endpoints do

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:  # concurrent requests: keep the i-th entries of every list together
                    outer.times.append(time.monotonic())
                    outer.client_ports.append(self.client_address[1])
                    outer.requests.append(body)
                    outer.auth_headers.append(self.headers.get("Authorization"))
                answer = outer.reply(body["messages"], body["model"])
                if isinstance(answer, tuple) and answer[0] == "sleep":
                    time.sleep(answer[1])
                    answer = answer[2]
                if isinstance(answer, int):
                    answer = {"status": answer, "body": {"error": {"message": f"fake error {answer}"}}}
                if isinstance(answer, dict) and "choice" in answer:
                    self._send(200, {"choices": [answer["choice"]]}, {})
                elif isinstance(answer, dict) and "raw" in answer:
                    self._send(answer["status"], None, {"Content-Type": "text/html", **answer.get("headers", {})},
                               raw=answer["raw"].encode())
                elif isinstance(answer, dict):
                    self._send(answer["status"], answer.get("body", {}), answer.get("headers", {}))
                else:
                    self._send(200, {"choices": [{"message": {"role": "assistant", "content": answer}}]}, {})

            def _send(self, status: int, payload, headers: dict, raw: bytes | None = None):
                data = json.dumps(payload).encode() if raw is None else raw
                try:
                    self.send_response(status)
                    for name, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))  # keep-alive needs the length
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # a short poll interval: shutdown() waits up to one, and every test shuts a server down
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
