"""gunicorn settings for busi-web: one gthread worker, many threads.

Flask-SocketIO runs in ``threading`` mode with simple-websocket, which
needs a single worker process (rooms live in that process) and threads
for concurrent requests and long-lived WebSocket connections.
"""

import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
worker_class = "gthread"
workers = 1
threads = int(os.environ.get("THREADS", "16"))
timeout = 120
graceful_timeout = 30
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
# gunicorn >= 25 opens a control socket at one fixed path per user by default; two busi-web servers on one host
# (a test instance beside the real one) would fight over it. Off unless CONTROL_SOCKET names a path for it.
control_socket_disable = not os.environ.get("CONTROL_SOCKET")
if os.environ.get("CONTROL_SOCKET"):
    control_socket = os.environ["CONTROL_SOCKET"]

