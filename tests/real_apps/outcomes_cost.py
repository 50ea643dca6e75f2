"""What the Python recipes' request outcome reports cost per request: tests/real_apps.rs runs
this with the venv's python in tests/real_apps/ and $NOTIFY_SOCKET set to a socket it reads.

Prints one JSON object, microseconds per request:
- gunicorn: gunicorn.conf.py's post_request hook (counting in the shared memory, the lock,
  and a report every 0.25 s), called in a loop as gunicorn calls it after each response;
- uvicorn: an ASGI app behind HandoverOutcomes minus the same app alone, awaited in a loop.
"""
import asyncio
import json
import os
import runpy
import time

N = 200_000


class Response:
    status_code = 200


def gunicorn_hook_us():
    # The config file hides NOTIFY_SOCKET from gunicorn's arbiter, as in a real start.
    conf = runpy.run_path("gunicorn.conf.py")
    post_request, resp = conf["post_request"], Response()
    started = time.perf_counter()
    for _ in range(N):
        post_request(None, None, {}, resp)
    took = time.perf_counter() - started
    conf["worker_exit"](None, None)
    os.environ["NOTIFY_SOCKET"] = os.environ.pop("HANDOVER_NOTIFY_SOCKET")
    return took / N * 1e6


async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


async def per_request_us(asgi):
    scope = {"type": "http", "path": "/"}

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        pass

    started = time.perf_counter()
    for _ in range(N):
        await asgi(scope, receive, send)
    return (time.perf_counter() - started) / N * 1e6


def uvicorn_middleware_us():
    from handover_outcomes import HandoverOutcomes

    async def both():
        alone = await per_request_us(app)
        wrapped = await per_request_us(HandoverOutcomes(app))
        return wrapped - alone

    return asyncio.run(both())


print(json.dumps({"requests": N, "gunicorn_hook_us": gunicorn_hook_us(), "uvicorn_middleware_us": uvicorn_middleware_us()}))
