"""Live charts over Socket.IO: REST history plus ``join_run`` with ``after_id`` gives every row exactly once.

The real app, store and pusher, with Flask-SocketIO's test client logged in
through the real login form. Most tests tick the pusher themselves, so that
the order of events is fixed; one lets the pusher's own thread run while
another thread writes rows and clients join at random moments.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from busi_web.web.live import LivePusher, pusher_of, socketio
from tests.helpers import make_user_client, wait_for


class ManualPusher(LivePusher):
    """The real pusher, but ticked by the test instead of by its background thread."""

    def ensure_started(self) -> None:
        pass


@pytest.fixture
def pusher(app, store) -> LivePusher:
    pusher = app.extensions["busi_live"] = ManualPusher(store)
    return pusher


@pytest.fixture
def connect(app):
    """Open logged-in Socket.IO clients: returns ``(http_client, socket_client)``; all are closed at the end."""
    sockets = []

    def make(name: str = "clin"):
        http = make_user_client(app, name, "velvet-cactus-17", "clinician")
        sock = socketio.test_client(app, flask_test_client=http)
        assert sock.is_connected()
        sockets.append(sock)
        return http, sock

    yield make
    for sock in sockets:
        if sock.is_connected():
            sock.disconnect()


class Listener:
    """What one page does: load the history over REST, join with its last_id, then append what is pushed."""

    def __init__(self, http, sock, run_id: int):
        self.http, self.sock, self.run_id = http, sock, run_id
        self.ids: list[int] = []
        self.statuses: list[dict] = []

    def load_history(self) -> int:
        body = self.http.get(f"/api/runs/{self.run_id}/metrics").get_json()
        self.ids += [r["id"] for r in body["rows"]]
        return body["last_id"]

    def join(self, after_id: int) -> dict:
        return self.sock.emit("join_run", {"run_id": self.run_id, "after_id": after_id}, callback=True)

    def open(self) -> Listener:
        assert self.join(self.load_history()) == {"ok": True}
        return self

    def receive(self) -> list[int]:
        """Take the pushed events; returns the ids of the new rows."""
        new = []
        for event in self.sock.get_received():
            payload = event["args"][0]
            assert payload["run_id"] == self.run_id
            if event["name"] == "metrics":
                new += [r["id"] for r in payload["rows"]]
            elif event["name"] == "status":
                self.statuses.append(payload)
        self.ids += new
        return new


def add_rows(store, run_id: int, n: int, epoch: int = 1) -> list[int]:
    last = store.add_metrics(run_id, [{"epoch": epoch, "step": i, "key": "batch_loss", "value": i} for i in range(n)])
    return list(range(last - n + 1, last + 1))


def all_ids(store, run_id: int) -> list[int]:
    return [r["id"] for r in store.metrics(run_id)]


def test_rest_history_then_join_gives_exactly_the_later_rows(store, pusher, connect):
    run = store.create_run("tiny_cnn", "phantom", {})
    add_rows(store, run["id"], 5)
    page = Listener(*connect(), run["id"])
    after_id = page.load_history()
    assert page.ids == all_ids(store, run["id"]) and after_id == page.ids[-1]
    between = add_rows(store, run["id"], 3)  # written after the REST answer, before the join
    assert page.join(after_id) == {"ok": True}
    assert page.receive() == between
    later = add_rows(store, run["id"], 2)
    pusher.tick()
    assert page.receive() == later
    pusher.tick()
    assert page.receive() == []
    assert page.ids == all_ids(store, run["id"])


def test_a_client_joining_a_busy_room_gets_no_gap_and_no_duplicate(store, pusher, connect):
    run = store.create_run("tiny_cnn", "phantom", {})
    add_rows(store, run["id"], 4)
    first = Listener(*connect("ana"), run["id"]).open()
    # Rows arrive that the room has not been sent yet; a second page loads them over REST and then joins.
    add_rows(store, run["id"], 3)
    second = Listener(*connect("bob"), run["id"])
    after_id = second.load_history()
    add_rows(store, run["id"], 2)
    assert second.join(after_id) == {"ok": True}
    late = Listener(*connect("cem"), run["id"])
    assert late.join(0) == {"ok": True}  # no REST history: everything comes over the socket
    for _ in range(2):
        add_rows(store, run["id"], 3)
        pusher.tick()
    everything = all_ids(store, run["id"])
    for page in (first, second, late):
        page.receive()
        assert page.ids == everything


def test_concurrent_writes_and_joins_lose_and_repeat_nothing(app_config):
    from busi_web import create_app

    app = create_app({**app_config, "LIVE_POLL_SECONDS": 0.02})  # the pusher's own thread, ticking fast
    store = app.extensions["busi_web"].store
    run_id = store.create_run("tiny_cnn", "phantom", {})["id"]
    writing = threading.Event()
    writing.set()

    def write() -> None:
        for step in range(150):
            store.add_metrics(run_id, [{"epoch": 1, "step": step, "key": k, "value": step}
                                       for k in ("batch_loss", "batch_acc")])
            time.sleep(0.002)
        writing.clear()

    writer = threading.Thread(target=write)
    pages = []
    rng = random.Random(0)
    writer.start()
    try:
        while writing.is_set() and len(pages) < 6:
            http = make_user_client(app, f"u{len(pages)}", "russet-falcon-48", "clinician")
            sock = socketio.test_client(app, flask_test_client=http)
            pages.append(Listener(http, sock, run_id).open())
            pusher_of(app).tick()  # a tick from here too, racing the pusher's thread
            time.sleep(rng.uniform(0, 0.05))
        writer.join(60)
        assert len(pages) >= 2, "the writer finished before two pages joined"
        everything = all_ids(store, run_id)
        assert len(everything) == 300

        def caught_up(page: Listener) -> bool:
            page.receive()
            return page.ids[-1:] == everything[-1:]

        for page in pages:
            wait_for(lambda p=page: caught_up(p), timeout=10, what="the pusher to deliver the last row")
            assert page.ids == everything
    finally:
        writer.join(60)
        for page in pages:
            page.sock.disconnect()  # the pusher's thread then has no room left to poll


def test_status_is_sent_on_join_and_whenever_it_changes(store, pusher, connect):
    run = store.create_run("tiny_cnn", "phantom", {})
    page = Listener(*connect(), run["id"]).open()
    page.receive()
    assert [(s["status"], s["epochs_done"], s["error"]) for s in page.statuses] == [("queued", 0, None)]
    store.transition(run["id"], "running")
    pusher.tick()
    pusher.tick()  # nothing changed: nothing sent
    store.update_run(run["id"], epochs_done=1, best_metric=0.5, best_metric_name="val_macro_f1")
    pusher.tick()
    store.transition(run["id"], "failed", error="out of memory")
    pusher.tick()
    page.receive()
    assert [(s["status"], s["epochs_done"], s["best_metric"], s["error"]) for s in page.statuses[1:]] == [
        ("running", 0, None, None), ("running", 1, 0.5, None), ("failed", 1, 0.5, "out of memory")]
    newcomer = Listener(*connect("bob"), run["id"]).open()
    newcomer.receive()
    assert [s["status"] for s in newcomer.statuses] == ["failed"]


def test_join_refuses_a_missing_run_and_bad_payloads(store, pusher, connect):
    _http, sock = connect()
    assert sock.emit("join_run", {"run_id": 999, "after_id": 0}, callback=True) == {
        "error": "run 999 does not exist"}
    assert "join_run needs" in sock.emit("join_run", {"after_id": 0}, callback=True)["error"]
    assert "join_run needs" in sock.emit("join_run", "7", callback=True)["error"]
    run = store.create_run("tiny_cnn", "phantom", {})
    bad = sock.emit("join_run", {"run_id": run["id"], "after_id": "last"}, callback=True)
    assert bad == {"error": "after_id must be a number"}
    add_rows(store, run["id"], 2)
    pusher.tick()
    assert sock.get_received() == []  # joined nothing
    assert sock.is_connected()


def test_after_leave_a_client_gets_nothing_more_and_the_others_carry_on(store, pusher, connect):
    run = store.create_run("tiny_cnn", "phantom", {})
    staying = Listener(*connect("ana"), run["id"]).open()
    leaving = Listener(*connect("bob"), run["id"]).open()
    leaving.sock.emit("leave_run", {"run_id": run["id"]})
    new = add_rows(store, run["id"], 2)
    pusher.tick()
    assert leaving.receive() == []
    assert staying.receive() == new
    # When the last listener disconnects, the pusher forgets the run; a new page starts from scratch.
    staying.sock.disconnect()
    add_rows(store, run["id"], 2)
    pusher.tick()
    fresh = Listener(*connect("cem"), run["id"]).open()
    fresh.receive()
    assert fresh.ids == all_ids(store, run["id"])
