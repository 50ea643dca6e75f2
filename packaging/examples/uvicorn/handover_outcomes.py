"""Request outcomes for handover's canaries, as a pure ASGI middleware: `app = HandoverOutcomes(app)`.

Counts the HTTP requests the app answers and the errors among them (a 5xx status, or an
exception the app raised, which uvicorn answers with 500), since the process started, and
sends both to $NOTIFY_SOCKET in one datagram, `X_HANDOVER_REQUESTS=<n>` and
`X_HANDOVER_ERRORS=<m>`: when they changed, at most every INTERVAL seconds (a change within
the interval goes when it ends; an idle app sends nothing), and once more at lifespan
shutdown. A report that cannot be sent is dropped: it never fails a request.

Copy this file next to the app and wrap the app where it is made:

    from handover_outcomes import HandoverOutcomes

    app = HandoverOutcomes(app)
"""
import asyncio
import os
import socket
import time


class HandoverOutcomes:
    INTERVAL = 0.25  # seconds between reports, at most

    def __init__(self, app):
        self.app = app
        self.requests = self.errors = 0
        self.sent = (0, 0)
        self.sent_at = float("-inf")
        self.timer = None  # a report waiting for the interval to end
        addr = os.environ.get("NOTIFY_SOCKET", "")
        self.addr = "\0" + addr[1:] if addr.startswith("@") else addr
        self.sock = None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, self.reporting_at_shutdown(send))
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = None

        async def send_seeing_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        error = True  # unless the app returns
        try:
            await self.app(scope, receive, send_seeing_status)
            error = status is None or status >= 500  # None: uvicorn answers 500
        finally:
            self.requests += 1
            self.errors += error
            self.report()

    def reporting_at_shutdown(self, send):
        async def lifespan_send(message):
            if message["type"] == "lifespan.shutdown.complete":
                self.report(final=True)
            await send(message)

        return lifespan_send

    def report(self, final=False):
        counts = (self.requests, self.errors)
        if not self.addr or counts == self.sent:
            return
        wait = self.sent_at + self.INTERVAL - time.monotonic()
        if wait > 0 and not final:
            if self.timer is None:
                self.timer = asyncio.get_running_loop().call_later(wait, self.report_later)
            return
        try:
            if self.sock is None:
                # Non-blocking: a busy handover drops a report rather than stalls the loop.
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
            self.sock.sendto(b"X_HANDOVER_REQUESTS=%d\nX_HANDOVER_ERRORS=%d\n" % counts, self.addr)
        except OSError:
            pass  # the counts are cumulative: the next report says it all
        self.sent, self.sent_at = counts, time.monotonic()

    def report_later(self):
        self.timer = None
        self.report()
