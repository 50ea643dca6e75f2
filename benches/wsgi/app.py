"""The benchmark's WSGI app: the same module under gunicorn alone and under handover.

At import it reads its version from $BENCH_APP_VERSION_FILE and then "imports" for
$BENCH_APP_IMPORT_SECONDS (2 s by default), like a real app loading its code. Versions:
- anything else: serves `hello from wsgi: gen=<version> pid=<pid>`;
- "broken": raises at import after the delay (a bad deploy: syntax error, missing module);
- "hang": never finishes importing (a deploy that waits forever, e.g. for a database that is
  not there): it neither serves nor reports ready.
"""
import os
import time

with open(os.environ["BENCH_APP_VERSION_FILE"], encoding="utf-8") as f:
    VERSION = f.read().strip()

time.sleep(float(os.environ.get("BENCH_APP_IMPORT_SECONDS", "2")))

if VERSION == "broken":
    raise RuntimeError("version 'broken' fails at import, as a bad deploy would")

while VERSION == "hang":
    time.sleep(3600)


def app(environ, start_response):
    body = f"hello from wsgi: gen={VERSION} pid={os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
