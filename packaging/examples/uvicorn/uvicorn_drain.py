"""uvicorn's HTTP/1.1 protocol with a keep-alive-safe drain: `uvicorn --http uvicorn_drain:DrainingH11Protocol`.

On shutdown uvicorn closes every idle keep-alive connection at once, and closes the others
after their response without saying `Connection: close`: both race with a client that sends
its next request on the connection (the request is lost; wrk counts a read error). This
subclass keeps an idle connection open until its next request arrives, answers every request
of the drain with `Connection: close`, and closes a connection that stays idle for
DRAIN_IDLE_GRACE seconds.
"""
from uvicorn.protocols.http.h11_impl import H11Protocol

# Above any client's reuse interval under load, at uvicorn's own --timeout-keep-alive
# default, below handover's graceful_timeout.
DRAIN_IDLE_GRACE = 5.0


def close_after_response(cycle):
    """Makes the response of `cycle` say `Connection: close`, and uvicorn close after it."""
    cycle.keep_alive = False
    if getattr(cycle, "says_close", False):
        return
    cycle.says_close = True
    send = cycle.send

    async def send_saying_close(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        await send(message)

    # The app is handed cycle.send when its task first runs, after this.
    cycle.send = send_saying_close


class DrainingH11Protocol(H11Protocol):
    draining = False

    def shutdown(self):
        self.draining = True
        if self.cycle is None or self.cycle.response_complete:
            # Idle: wait for the next request (bounded) instead of closing now.
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(DRAIN_IDLE_GRACE, self.timeout_keep_alive_handler)
        else:
            close_after_response(self.cycle)

    def handle_events(self):
        super().handle_events()
        if self.draining and self.cycle is not None and not self.cycle.response_complete:
            close_after_response(self.cycle)
