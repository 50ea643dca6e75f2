"""gunicorn settings for the benchmark, used both for plain gunicorn (-w 4, kill -HUP) and for
the `gunicorn --preload -w 1` workers under handover.

Readiness: gunicorn's arbiter, which would announce READY=1 as soon as it has its sockets,
never sees NOTIFY_SOCKET, in the README recipe's words (tests/readme_gunicorn.rs checks
them), and each gunicorn *worker* sends READY=1 once the app is imported
(post_worker_init), so that the benchmark can time plain gunicorn's HUP worker by worker.
The recipe has only the last worker to start send it; under handover the benchmark runs
`-w 1`, where the two are the same. This file is executed in the arbiter before it starts,
and again on every HUP (NOTIFY_SOCKET is gone by then; HANDOVER_NOTIFY_SOCKET stays).
"""
import os, socket

# gunicorn's arbiter sends READY=1 itself as soon as it has its sockets, before any worker
# has imported the app: keep NOTIFY_SOCKET away from it, for the workers to use.
if "NOTIFY_SOCKET" in os.environ:
    os.environ["HANDOVER_NOTIFY_SOCKET"] = os.environ.pop("NOTIFY_SOCKET")

def post_worker_init(worker):
    addr = os.environ.get("HANDOVER_NOTIFY_SOCKET")
    if addr:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"READY=1", addr)

# The benchmark's own settings.
worker_class = "sync"
graceful_timeout = 10
loglevel = "warning"
