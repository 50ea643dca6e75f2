"""The app of benchmark scenario 10 (a release that boots but fails): one module, served as
WSGI (`release_app:app`, by gunicorn alone and by gunicorn under handover) and as ASGI
(`release_app:asgi`, by uvicorn), with the same logic behind both.

At import it reads the release from $BENCH_APP_VERSION_FILE, one line: a version name,
optionally followed by `BAD=<share>` (e.g. `bad BAD=0.3`), then "imports" for
$BENCH_APP_IMPORT_SECONDS (2 s by default), like a real app loading its code. It boots and
serves either way: a release with `BAD=0.3` answers 500 to 30 % of the requests it gets,
spread evenly (of every 10 requests a process answers, 3 fail: deterministic, not random),
and 200 to the rest. Every body says `gen=<version>`, so the client knows which release
answered, 500s included.

The ASGI side says READY=1 on $NOTIFY_SOCKET from its lifespan startup (uvicorn has no
readiness hook of its own); the WSGI side leaves readiness and the request outcomes to
gunicorn.conf.py (the README's recipe: post_worker_init and post_request).
"""
import os
import socket
import time

with open(os.environ["BENCH_APP_VERSION_FILE"], encoding="utf-8") as f:
    _release = f.read().split()

VERSION = _release[0] if _release else "?"
BAD_SHARE = 0.0
for word in _release[1:]:
    if word.startswith("BAD="):
        BAD_SHARE = float(word[len("BAD="):])

time.sleep(float(os.environ.get("BENCH_APP_IMPORT_SECONDS", "2")))

_answered = 0  # requests this process answered


def _fails():
    """Whether this request is one of the BAD_SHARE that fail: request n (from 0) fails when
    floor((n + 1) * share) > floor(n * share), an even spread of exactly that share."""
    global _answered
    n = _answered
    _answered += 1
    return int((n + 1) * BAD_SHARE) > int(n * BAD_SHARE)


def _answer():
    if _fails():
        return 500, f"failed on purpose: gen={VERSION} pid={os.getpid()}\n".encode()
    return 200, f"hello from wsgi: gen={VERSION} pid={os.getpid()}\n".encode()


_REASONS = {200: "200 OK", 500: "500 Internal Server Error"}


def app(environ, start_response):
    status, body = _answer()
    start_response(_REASONS[status], [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _notify(state):
    addr = os.environ.get("NOTIFY_SOCKET")
    if addr:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(state, "\0" + addr[1:] if addr.startswith("@") else addr)


async def asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _notify(b"READY=1")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    status, body = _answer()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
