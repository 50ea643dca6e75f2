"""gunicorn settings for an app under handover (with app.toml next to this file): one
handover worker runs one gunicorn arbiter with `--preload -w 4`; the app is imported once and
its 4 workers share that memory.

Copy it next to your app (/srv/app/gunicorn.conf.py; the command in app.toml names it
relative to the working directory). Readiness: the arbiter never sees NOTIFY_SOCKET (it
would say READY=1 as soon as it has its sockets, before the app is imported, and handover
would retire the old generation too early); each gunicorn worker sends READY=1 once it runs,
after the arbiter imported the app. tests/real_apps.rs runs this very file under handover.
"""
import os, socket

# gunicorn's arbiter sends READY=1 itself as soon as it has its sockets, before any worker
# has imported the app: keep NOTIFY_SOCKET away from it, for the worker to use.
if "NOTIFY_SOCKET" in os.environ:
    os.environ["HANDOVER_NOTIFY_SOCKET"] = os.environ.pop("NOTIFY_SOCKET")

def post_worker_init(worker):
    addr = os.environ.get("HANDOVER_NOTIFY_SOCKET")
    if addr:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"READY=1", addr)
