"""gunicorn settings of the README's recipe, as tests/real_apps.rs runs it under handover:
one handover worker = one gunicorn arbiter with `--preload -w 4`.

Readiness (the README's recipe, verbatim; tests/readme_gunicorn.rs checks it): the arbiter
never sees NOTIFY_SOCKET, each gunicorn worker sends READY=1 once it runs (with --preload,
after the app was imported by the arbiter).
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
