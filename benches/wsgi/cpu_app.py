"""The WSGI app of benchmark scenario 9 (reload under CPU saturation, issue 23): an app whose
import *burns* CPU, where app.py only sleeps.

At import it reads its version from $BENCH_APP_VERSION_FILE and then spins until this process
has used $BENCH_APP_IMPORT_CPU_SECONDS (2 by default) of CPU time: a real app compiling and
loading its code. The wall-clock time that takes depends on how much CPU the process gets,
which is the point of the scenario. Each request spins for $BENCH_APP_REQUEST_CPU_MS (1 by
default) of CPU time, then answers `hello from wsgi: gen=<version> pid=<pid>`.
"""
import os
import time

with open(os.environ["BENCH_APP_VERSION_FILE"], encoding="utf-8") as f:
    VERSION = f.read().strip()

IMPORT_CPU = float(os.environ.get("BENCH_APP_IMPORT_CPU_SECONDS", "2"))
REQUEST_CPU = float(os.environ.get("BENCH_APP_REQUEST_CPU_MS", "1")) / 1000.0


def burn(seconds):
    """Spins until this process has used `seconds` more CPU time (not wall-clock time), in
    user space: the clock (a system call) is read every 1,000 iterations, some 20 µs."""
    until = time.process_time() + seconds
    while time.process_time() < until:
        for _ in range(1000):
            pass


burn(IMPORT_CPU)


def app(environ, start_response):
    burn(REQUEST_CPU)
    body = f"hello from wsgi: gen={VERSION} pid={os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
