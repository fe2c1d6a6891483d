"""Bearer-token endpoints: Orthanc's packaged build has no token login, so a small real HTTP server on
127.0.0.1 plays a DICOMweb root that accepts one token (dcm4chee and cloud archives log in this way)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from busi_web.pacs.client import Pacs, PacsError
from busi_web.pacs.endpoints import endpoints_from

TOKEN = "token-7f3a"


class Root(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 - the name http.server calls
        Root.seen.append(self.path)
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps([{"0020000D": {"vr": "UI", "Value": ["1.2.3"]},
                            "00080061": {"vr": "CS", "Value": ["US"]}}]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def root():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    server.shutdown()


def test_a_bearer_token_is_sent_and_a_wrong_one_is_named(root, tmp_path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    endpoints = endpoints_from({"PACS_SERVERS": {
        "archive": {"url": root, "auth": "bearer", "token_file": str(tmp_path / "token")},
        "stale": {"url": root, "auth": "bearer", "token": "expired"}}})
    assert TOKEN not in repr(endpoints["archive"])  # the secret stays out of reprs (and so of tracebacks)
    found = Pacs(endpoints["archive"]).studies(modality="US")
    assert [s["00080061"]["Value"] for s in found] == [["US"]]
    assert any("ModalitiesInStudy=US" in path for path in Root.seen)
    with pytest.raises(PacsError) as caught:
        Pacs(endpoints["stale"]).studies()
    assert "refused busi-web's credentials (HTTP 401)" in str(caught.value) and "expired" not in str(caught.value)
