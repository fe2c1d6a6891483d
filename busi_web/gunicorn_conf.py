"""gunicorn settings for busi-web: gthread workers (one by default), many threads each.

Flask-SocketIO runs in ``threading`` mode with simple-websocket: threads for
concurrent requests and long-lived WebSocket connections. Several workers
(``WORKERS``) need ``REDIS_URL`` (the live channel's message queue and the
login counters, shared) and a shared store; the pages' live channel opens a
WebSocket straight away, which stays with the worker that accepted it, so no
sticky sessions are needed inside one gunicorn (docs/scaling.md).
"""

import ctypes
import ctypes.util
import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
worker_class = "gthread"
workers = int(os.environ.get("WORKERS", "1"))
threads = int(os.environ.get("THREADS", "16"))
timeout = 120
graceful_timeout = 30
keepalive = 5
accesslog = "-"
# The request's path without its query string (%(U)s): a query may carry what a user typed, such as an
# accession number on the Studies page, and no identifier belongs in a log.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
# gunicorn >= 25 opens a control socket at one fixed path per user by default; two busi-web servers on one host
# (a test instance beside the real one) would fight over it. Off unless CONTROL_SOCKET names a path for it.
control_socket_disable = not os.environ.get("CONTROL_SOCKET")
if os.environ.get("CONTROL_SOCKET"):
    control_socket = os.environ["CONTROL_SOCKET"]


# glibc's malloc, tuned for a worker whose threads handle large images. Memory first, by default:
# - Blocks of MALLOC_MMAP_THRESHOLD (1 MiB) or more, such as decoded images, heatmaps and the model's activations,
#   are always mmapped, so they go back to the system when freed instead of staying in one of many per-thread
#   arenas (16 threads x a 100 MB decode each kept 2 GB resident); at most MALLOC_ARENA_MAX arenas are made.
# - Every MALLOC_TRIM_EVERY requests the worker asks glibc to hand the free pages inside its arenas back
#   (malloc_trim: a millisecond or two); without it the small blocks of a long stream of diagnoses fragment the
#   arenas and the resident size creeps up. 0: never.
# - MALLOC_TRIM_THRESHOLD (0: glibc's 128 kB) is how much free memory an arena keeps at its top.
# The price is CPU: memory handed back is faulted in afresh, 4 kB at a time, on the next model pass (3,500 to
# 4,000 page faults and 17 to 25 ms of system CPU per ResNet18 diagnosis). A host with memory to spare can keep
# the model's working set instead (MALLOC_MMAP_THRESHOLD=33554432 MALLOC_TRIM_THRESHOLD=268435456
# MALLOC_TRIM_EVERY=1024): docs/scaling.md gives both sides, measured by benchmarks/serve.py and memory.py.
MALLOC_MMAP_THRESHOLD = int(os.environ.get("MALLOC_MMAP_THRESHOLD", str(1 << 20)))
MALLOC_TRIM_THRESHOLD = int(os.environ.get("MALLOC_TRIM_THRESHOLD", "0"))
MALLOC_ARENA_MAX = int(os.environ.get("MALLOC_ARENA_MAX_WORKER", "4"))
MALLOC_TRIM_EVERY = int(os.environ.get("MALLOC_TRIM_EVERY", "16"))
_served = {"requests": 0}


def post_fork(server, worker):  # gunicorn hook, in the worker process before it serves
    tune_malloc(MALLOC_MMAP_THRESHOLD, MALLOC_ARENA_MAX, MALLOC_TRIM_THRESHOLD)


def post_request(worker, req, environ, resp):  # gunicorn hook, after each request, in the worker
    _served["requests"] += 1
    if MALLOC_TRIM_EVERY and _served["requests"] % MALLOC_TRIM_EVERY == 0:
        trim_malloc()


def trim_malloc() -> bool:
    """glibc's malloc_trim(0): free pages anywhere in the heap go back to the system (False off glibc)."""
    try:
        return bool(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def tune_malloc(mmap_threshold: int, arena_max: int, trim_threshold: int = 0) -> bool:
    """Set glibc's M_MMAP_THRESHOLD, M_ARENA_MAX and M_TRIM_THRESHOLD (0: leave it); False where the C library is
    not glibc or refuses a value."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # from glibc's malloc.h
    done = True
    if mmap_threshold:
        done &= bool(mallopt(m_mmap_threshold, int(mmap_threshold)))
    if arena_max:
        done &= bool(mallopt(m_arena_max, int(arena_max)))
    if trim_threshold:
        done &= bool(mallopt(m_trim_threshold, int(trim_threshold)))
    return done
