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
