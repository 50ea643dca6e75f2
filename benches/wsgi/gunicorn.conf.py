"""gunicorn settings for the benchmark, used both for plain gunicorn (-w 4, kill -HUP) and for
the `gunicorn --preload -w 1` workers under handover.

Readiness: each gunicorn *worker* sends READY=1 to $NOTIFY_SOCKET once the app is imported
(post_worker_init), so a notify-type supervisor learns when that process really serves.
gunicorn's arbiter also sends READY=1 by itself as soon as it has its sockets, which is
before its worker has imported anything unless --preload is given; to keep that early
message away from the supervisor, the arbiter's NOTIFY_SOCKET is moved aside here (this
file is executed in the arbiter before it starts, and again on every HUP).
"""
import os
import socket

_notify = os.environ.pop("NOTIFY_SOCKET", None)
if _notify:
    os.environ["BENCH_NOTIFY_SOCKET"] = _notify

worker_class = "sync"
graceful_timeout = 10
loglevel = "warning"


def post_worker_init(worker):
    addr = os.environ.get("BENCH_NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(f"READY=1\nSTATUS=gunicorn worker {os.getpid()} serves".encode(), addr)
