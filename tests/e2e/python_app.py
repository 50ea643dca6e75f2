"""The Python app of the e2e suite: a plain WSGI app served by the standard library's wsgiref
on the socket handover passes (fd 3), as an app with no dependencies would run under the
shipped, unprivileged handover@.service.

Readiness: READY=1 to $NOTIFY_SOCKET once it serves. SIGTERM: finish the request in hand,
then exit. GET / answers who and where it runs (uid, gid, generation) and whether it may
write to its state directory ($STATE_DIRECTORY, the unit's StateDirectory=), as JSON.
"""
import json
import os
import signal
import socket
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer


def app(environ, start_response):
    state = os.environ.get("STATE_DIRECTORY", "")
    wrote = False
    if state:
        # What an app does with its state directory: keep a file there.
        path = os.path.join(state, "python-app-%d" % os.getpid())
        with open(path, "w") as f:
            f.write("ok\n")
        wrote = os.path.exists(path)
    body = json.dumps({
        "app": "python",
        "gen": os.environ.get("HANDOVER_GENERATION", "-"),
        "pid": os.getpid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "state_directory": state,
        "wrote_state": wrote,
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class FdServer(WSGIServer):
    """wsgiref's server on an inherited listening socket instead of one it binds."""

    def __init__(self, fd):
        super().__init__(("", 0), WSGIRequestHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = socket.socket(fileno=fd)
        self.server_address = self.socket.getsockname()
        # What server_bind() would have set (no name lookup: the address will do).
        self.server_name, self.server_port = self.server_address[:2]
        self.setup_environ()


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def notify(message):
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(message.encode())


def main():
    server = FdServer(3)
    server.RequestHandlerClass = QuietHandler
    server.set_app(app)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    notify("READY=1")
    server.serve_forever()


if __name__ == "__main__":
    main()
