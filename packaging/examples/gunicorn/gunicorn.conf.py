"""gunicorn settings for an app under handover (with app.toml next to this file): one
handover worker runs one gunicorn arbiter with `--preload -w 4`; the app is imported once and
its 4 workers share that memory.

Copy it next to your app (/srv/app/gunicorn.conf.py; the command in app.toml names it
relative to the working directory). Readiness: the arbiter never sees NOTIFY_SOCKET (it
would say READY=1 as soon as it has its sockets, before the app is imported, and handover
would retire the old generation too early); the last of the arbiter's workers to start
sends READY=1 once it runs, after the arbiter imported the app. Request outcomes, for
handover's canaries: the requests and 5xx answers of all the arbiter's workers, counted in
memory they share and sent to handover at most every 0.25 s. tests/real_apps.rs runs this
very file under handover.
"""
import fcntl, os, socket, struct

# gunicorn's arbiter sends READY=1 itself as soon as it has its sockets, before any worker
# has imported the app: keep NOTIFY_SOCKET away from it, for the workers to use.
if "NOTIFY_SOCKET" in os.environ:
    os.environ["HANDOVER_NOTIFY_SOCKET"] = os.environ.pop("NOTIFY_SOCKET")

# READY=1 once every worker runs, not the first: gunicorn starts them up to 0.1 s apart, and
# handover retires the old generation as soon as this one is ready. The count of workers
# that ran is in memory the arbiter made and its workers share.
_workers_up = os.memfd_create("handover-workers-up")
os.ftruncate(_workers_up, 8)

def post_worker_init(worker):
    fcntl.lockf(_workers_up, fcntl.LOCK_EX)
    up = struct.unpack("Q", os.pread(_workers_up, 8, 0))[0] + 1
    os.pwrite(_workers_up, struct.pack("Q", up), 0)
    fcntl.lockf(_workers_up, fcntl.LOCK_UN)
    addr = os.environ.get("HANDOVER_NOTIFY_SOCKET")
    if addr and up == worker.cfg.workers:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"READY=1", addr)

# Request outcomes (README "Request outcomes"). To handover the arbiter and its workers are
# one worker, so the counts are the arbiter's: all its workers add to one pair of counters
# in memory made here, in the arbiter, and shared by fork. A lock the kernel drops when its
# holder dies (lockf) orders the updates and the sends, so handover never sees a count go
# back; one timer per worker sends what changed within the interval, none while idle.
import mmap, sys, threading, time

OUTCOMES_INTERVAL = 0.25  # seconds between reports, at most
_outcomes_fd = os.memfd_create("handover-outcomes")
os.ftruncate(_outcomes_fd, mmap.PAGESIZE)
_outcomes = mmap.mmap(_outcomes_fd, mmap.PAGESIZE)  # MAP_SHARED: one copy for every worker
_OUTCOMES = struct.Struct("QQQQd")  # requests, errors; last report's requests, errors, time
_outcomes_threads = threading.Lock()  # the lockf lock is per process: this one is per thread
_outcomes_timer = None  # this worker's pending report
_outcomes_socket = None  # this worker's, made at its first report

def _report_outcomes(request=0, error=0, final=False, timer=False):
    global _outcomes_timer
    with _outcomes_threads:
        fcntl.lockf(_outcomes_fd, fcntl.LOCK_EX)
        try:
            if timer:
                _outcomes_timer = None
            requests, errors, sent_requests, sent_errors, sent_at = _OUTCOMES.unpack_from(_outcomes)
            requests, errors, now = requests + request, errors + error, time.monotonic()
            if (requests, errors) != (sent_requests, sent_errors):
                wait = sent_at + OUTCOMES_INTERVAL - now
                if wait <= 0 or final:
                    _send_outcomes(requests, errors)
                    sent_requests, sent_errors, sent_at = requests, errors, now
                elif _outcomes_timer is None:
                    _outcomes_timer = threading.Timer(wait, _report_outcomes, kwargs={"timer": True})
                    _outcomes_timer.daemon = True
                    _outcomes_timer.start()
            _OUTCOMES.pack_into(_outcomes, 0, requests, errors, sent_requests, sent_errors, sent_at)
        finally:
            fcntl.lockf(_outcomes_fd, fcntl.LOCK_UN)

def _send_outcomes(requests, errors):
    global _outcomes_socket
    addr = os.environ.get("HANDOVER_NOTIFY_SOCKET", "")
    try:
        if _outcomes_socket is None:
            # Non-blocking: a busy handover drops a report rather than stalls a request.
            _outcomes_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        message = b"X_HANDOVER_REQUESTS=%d\nX_HANDOVER_ERRORS=%d\n" % (requests, errors)
        _outcomes_socket.sendto(message, "\0" + addr[1:] if addr.startswith("@") else addr)
    except OSError:
        pass  # never fail a request; the counts are cumulative, the next report says it all

def post_request(worker, req, environ, resp):
    if resp is None:  # gunicorn could not parse the request: it answers 400 itself
        error = False
    else:
        # Runs in a `finally`: sys.exc_info() is the app's exception, if it raised one
        # (gunicorn answers 500); an OSError is the client's connection going away.
        exc = sys.exc_info()[1]
        status = getattr(resp, "status_code", None)  # None: the app never answered
        error = status is None or status >= 500 or (exc is not None and not isinstance(exc, OSError))
    _report_outcomes(request=1, error=int(error))

def worker_exit(server, worker):
    _report_outcomes(final=True)  # what changed within the last interval
