"""The WSGI app tests/real_apps.rs runs under gunicorn: a plain app from the README's recipe.

Environment: APP_IMPORT_SECONDS (import time, default 1), APP_BROKEN=1 (the import fails
after that time: a bad deploy), APP_BALLAST_MB (data built at import, for the memory
comparison), APP_MARK_DIR (a file is created there when a /sleep request starts, so the test
knows the request is in flight without sleeping). GET /error answers 500, GET /raise raises
(gunicorn answers 500): what the request outcomes count as errors.
"""
import os
import time
from urllib.parse import parse_qs

time.sleep(float(os.environ.get("APP_IMPORT_SECONDS", "1")))

if os.environ.get("APP_BROKEN") == "1":
    raise RuntimeError("APP_BROKEN=1: this version fails at import, as a bad deploy would")

# What a real app builds at import (code, caches, tables): 1 KiB objects, shared with the
# workers by fork when the app is preloaded.
BALLAST = [bytes(1024) for _ in range(int(os.environ.get("APP_BALLAST_MB", "0")) * 1024)]

GEN = os.environ.get("HANDOVER_GENERATION", "-")


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/error":
        start_response("500 Internal Server Error", [("Content-Type", "text/plain"), ("Content-Length", "18")])
        return [b"failed on purpose\n"]
    if environ.get("PATH_INFO") == "/raise":
        raise RuntimeError("/raise: an exception in the app")
    if environ.get("PATH_INFO") == "/sleep":
        ms = int(parse_qs(environ.get("QUERY_STRING", "")).get("ms", ["0"])[0])
        mark = os.environ.get("APP_MARK_DIR")
        if mark:
            open(os.path.join(mark, "sleep-started"), "w").close()
        time.sleep(ms / 1000)
        body = f"slept {ms} ms\n".encode()
    else:
        body = f"hello from gunicorn: gen={GEN} pid={os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
