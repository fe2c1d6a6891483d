"""Socket.IO: pushes new metric rows and status changes of a run to the clients watching it.

Flask-SocketIO runs in ``threading`` mode (simple-websocket under gunicorn's
gthread worker); eventlet and gevent are deliberately not used.

Protocol (also in the README):

* client -> server ``join_run`` ``{"run_id": 7, "after_id": 123}``: the page
  first loads the history over REST (``GET /api/runs/7/metrics``, whose
  answer carries ``last_id``), then joins with ``after_id=last_id``.
* server -> client ``metrics`` ``{"run_id": 7, "rows": [{"id", "epoch", "step",
  "key", "value", "time"}, ...]}``: rows in id order, each exactly once.
* server -> client ``status`` ``{"run_id": 7, "status": "running", "epochs_done": 3,
  "error": null, "best_metric": 0.81}`` on join and whenever it changes.
* client -> server ``leave_run`` ``{"run_id": 7}``.

No gap and no duplicate: under one lock, the room is first sent what it has
not had yet (its cursor then covers every row the client loaded over REST),
a joining client is sent the rows between its ``after_id`` and the room's
cursor, then joins the room; the pusher advances the room's cursor under the
same lock.

Several workers or hosts: each web process has its own pusher, which reads
the shared store and serves the clients connected to that process. With
``REDIS_URL`` set, Socket.IO's messages go through Redis (Flask-SocketIO's
message queue), so an emit reaches a client whichever process holds it; a
pusher's rooms carry its process's own name (``run:7@<node>``), so that two
processes never both deliver a row to one client. A session that ends
anywhere (a logout on another host) is seen in the store by every pusher.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

from flask import Flask, current_app, request
from flask_login import current_user
from flask_socketio import SocketIO, join_room, leave_room

from busi_web.services import services_of
from busi_web.specs import Param
from busi_web.store import MAX_ID, RunNotFound
from busi_web.web.hardening import origin_checker
from busi_web.web.helpers import RUN_ID, hide_paths

log = logging.getLogger(__name__)

socketio = SocketIO()

STATUS_FIELDS = ("status", "epochs_done", "error", "best_metric", "best_metric_name", "test_macro_f1")


class LivePusher:
    """Polls the store and emits new rows to the rooms that have listeners."""

    def __init__(self, store, poll_seconds: float = 0.25):
        self.store = store
        self.poll_seconds = poll_seconds
        self.lock = threading.Lock()
        self.cursors: dict[int, int] = {}  # run id -> last metric id pushed to the room
        self.statuses: dict[int, dict[str, Any]] = {}
        self.members: dict[int, set[str]] = {}
        self.sessions: dict[str, tuple[int, int]] = {}  # sid -> (user id, session version it connected with)
        self.node = uuid.uuid4().hex[:12]  # this process's name in its rooms
        self._thread = None

    def room(self, run_id: int) -> str:
        """The room of this process's listeners to run ``run_id``."""
        return f"run:{run_id}@{self.node}"

    def status_of(self, run_id: int) -> dict[str, Any]:
        """What a room hears of a run's state; one message goes to everyone, so server paths are hidden (the run's
        API answer has them whole for admins)."""
        run = self.store.get_run(run_id)
        return hide_paths({"run_id": run_id, **{k: run.get(k) for k in STATUS_FIELDS}})

    def join(self, sid: str, run_id: int, after_id: int) -> None:
        with self.lock:
            status = self.status_of(run_id)
            if run_id not in self.cursors:
                self.cursors[run_id] = self.store.latest_metric_id(run_id)
                self.statuses[run_id] = status
            else:
                # The client may already hold rows past the room's cursor (its REST history is newer than the
                # last tick); the room would send them again. Bring the room up to date first.
                self._push_rows(run_id)
            cursor = self.cursors[run_id]
            rows = [r for r in self.store.metrics(run_id, after_id=after_id) if r["id"] <= cursor]
            if rows:
                socketio.emit("metrics", {"run_id": run_id, "rows": rows}, to=sid)
            socketio.emit("status", status, to=sid)
            join_room(self.room(run_id), sid=sid, namespace="/")
            self.members.setdefault(run_id, set()).add(sid)
        self.ensure_started()

    def leave(self, sid: str, run_id: int | None = None) -> None:
        with self.lock:
            for rid in [run_id] if run_id is not None else list(self.members):
                members = self.members.get(rid, set())
                if sid in members:
                    members.discard(sid)
                    leave_room(self.room(rid), sid=sid, namespace="/")
                if not members:
                    self.members.pop(rid, None)
                    self.cursors.pop(rid, None)
                    self.statuses.pop(rid, None)

    def _push_rows(self, run_id: int) -> None:
        """Send the room the rows after its cursor and advance it (the caller holds the lock)."""
        rows = self.store.metrics(run_id, after_id=self.cursors[run_id])
        if rows:
            self.cursors[run_id] = rows[-1]["id"]
            socketio.emit("metrics", {"run_id": run_id, "rows": rows}, to=self.room(run_id))

    def connect(self, sid: str, user_id: int, session_version: int) -> None:
        """A logged-in client connected: remember whose session it carries."""
        with self.lock:
            self.sessions[sid] = (int(user_id), int(session_version))
        self.ensure_started()

    def forget(self, sid: str) -> None:
        with self.lock:
            self.sessions.pop(sid, None)

    def revoked(self) -> list[str]:
        """The connections whose session has ended since they connected (a logout anywhere, a password or role
        change, a reset, the account disabled): read from the store, so it holds across workers and hosts."""
        with self.lock:
            sessions = dict(self.sessions)
        ended, users = [], {}
        for sid, (user_id, version) in sessions.items():
            if user_id not in users:
                users[user_id] = self.store.get_user_by_id(user_id)
            row = users[user_id]
            if row is None or row.get("disabled") or int(row.get("session_version") or 0) != version:
                ended.append(sid)
        return ended

    def tick(self) -> None:
        for sid in self.revoked():  # revocation ends live connections at once, before any more rows go out
            self.leave(sid)
            self.forget(sid)
            socketio.server.disconnect(sid, namespace="/")
        with self.lock:
            for run_id in list(self.members):
                self._push_rows(run_id)
                status = self.status_of(run_id)
                if status != self.statuses.get(run_id):
                    self.statuses[run_id] = status
                    socketio.emit("status", status, to=self.room(run_id))

    def ensure_started(self) -> None:
        if self._thread is None:
            self._thread = socketio.start_background_task(self._loop)

    def _loop(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("live pusher tick failed")
            socketio.sleep(self.poll_seconds)


def init_live(app: Flask) -> None:
    """Give ``app`` its pusher and attach the Socket.IO server (threading mode; connections only from the site's
    own origin, see :func:`~busi_web.web.hardening.origin_checker`)."""
    app.extensions["busi_live"] = LivePusher(services_of(app).store, app.config["LIVE_POLL_SECONDS"])
    socketio.init_app(app, async_mode="threading", cors_allowed_origins=origin_checker(app.config),
                      message_queue=app.config.get("REDIS_URL") or None, channel="busi-web-live")


def pusher_of(app: Flask) -> LivePusher:
    """The app's :class:`LivePusher`."""
    return app.extensions["busi_live"]


AFTER_ID = Param("after_id", "int", 0, minimum=0, maximum=MAX_ID)


def _field(data: Any, param: Param) -> Any:
    """A field of a Socket.IO payload, typed and bounded by the one parameter parser; ``ValueError`` if bad."""
    if not isinstance(data, dict):
        raise ValueError("send an object")
    return param.coerce(data.get(param.name))


def _run_id(data: Any) -> int | None:
    try:
        return _field(data, RUN_ID)  # None when it is missing
    except ValueError:
        return None


@socketio.on("connect")
def on_connect(auth=None):  # Socket.IO passes the client's auth payload; the session cookie decides
    """Refuse Socket.IO clients that are not logged in (the live charts are for users only), and remember whose
    session a connection carries, so that its end (logout, disabled, ...) ends the connection too."""
    if not current_user.is_authenticated:
        return False
    pusher_of(current_app).connect(request.sid, current_user.id, current_user.session_version)
    return True


@socketio.on("join_run")
def on_join(data):
    run_id = _run_id(data)
    if run_id is None:
        return {"error": "join_run needs {'run_id': <number>, 'after_id': <number>}"}
    try:
        after_id = _field(data, AFTER_ID)
    except ValueError:
        return {"error": "after_id must be a number"}
    try:
        pusher_of(current_app).join(request.sid, run_id, after_id)
    except RunNotFound:
        return {"error": f"run {run_id} does not exist"}
    return {"ok": True}


@socketio.on("leave_run")
def on_leave(data):
    pusher_of(current_app).leave(request.sid, _run_id(data))


@socketio.on("disconnect")
def on_disconnect(*_args):
    pusher = pusher_of(current_app)
    pusher.leave(request.sid)
    pusher.forget(request.sid)
