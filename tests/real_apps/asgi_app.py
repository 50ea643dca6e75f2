"""The ASGI app tests/real_apps.rs runs under uvicorn (`uvicorn --fd 3`).

READY=1 goes to $NOTIFY_SOCKET from the lifespan startup handler, after the import; the
request outcomes from the README's middleware (handover_outcomes.py, the shipped recipe's).
Environment as in wsgi_app.py: APP_IMPORT_SECONDS, APP_BROKEN, APP_MARK_DIR. GET /error
answers 500, GET /raise raises (uvicorn answers 500).
"""
import asyncio
import os
import socket
import time
from urllib.parse import parse_qs

from handover_outcomes import HandoverOutcomes

time.sleep(float(os.environ.get("APP_IMPORT_SECONDS", "1")))

if os.environ.get("APP_BROKEN") == "1":
    raise RuntimeError("APP_BROKEN=1: this version fails at import, as a bad deploy would")

GEN = os.environ.get("HANDOVER_GENERATION", "-")


def notify(state):
    addr = os.environ.get("NOTIFY_SOCKET")
    if addr:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(state, addr)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                notify(b"READY=1")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/raise":
        raise RuntimeError("/raise: an exception in the app")
    status = 200
    if scope["path"] == "/error":
        status, body = 500, b"failed on purpose\n"
    elif scope["path"] == "/sleep":
        ms = int(parse_qs(scope["query_string"].decode()).get("ms", ["0"])[0])
        mark = os.environ.get("APP_MARK_DIR")
        if mark:
            open(os.path.join(mark, "sleep-started"), "w").close()
        await asyncio.sleep(ms / 1000)
        body = f"slept {ms} ms\n".encode()
    else:
        body = f"hello from uvicorn: gen={GEN} pid={os.getpid()}\n".encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


app = HandoverOutcomes(app)
