"""The serving benchmark's server and clients: a real gunicorn on 127.0.0.1, concurrent keep-alive clients
posting diagnoses, the server's Prometheus metrics, and CPU seconds read from /proc (used by ``serve.py``)."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METRICS_TOKEN = "serve-benchmark-metrics"


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """The server's Prometheus metrics: ``{(sample name, sorted labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = request(http.client.HTTPConnection("127.0.0.1", port, timeout=30), "GET", "/metrics",
                           {"Authorization": f"Bearer {METRICS_TOKEN}"})
    if status != 200:
        raise SystemExit(f"/metrics answered {status}")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def multipart(png: bytes, name: str, explainer: str, images: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    fields = {"explainer": explainer, "images": images}
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
             for k, v in fields.items()]
    parts += [f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
              "Content-Type: image/png\r\n\r\n".encode(), png, f"\r\n--{boundary}--\r\n".encode()]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(inst: Path, port: int, threads: int, log: Path, extra_env: dict[str, str] | None = None
                 ) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUSI_WEB_")}
    from busi_web.cli.instance import serving_tunables

    env["GLIBC_TUNABLES"] = serving_tunables(env.get("GLIBC_TUNABLES"))  # as `busi-web serve` starts gunicorn
    env.update(BUSI_WEB_INSTANCE_PATH=str(inst), BUSI_WEB_AUTO_FIRST_RUN="false", BUSI_WEB_DEVICE="cpu",
               HOST="127.0.0.1", PORT=str(port), THREADS=str(threads), LOG_LEVEL="warning", **(extra_env or {}))
    conf = ROOT / "busi_web" / "gunicorn_conf.py"
    return subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(conf), "--chdir", str(ROOT),
                             "--access-logfile", "/dev/null", "wsgi:app"], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def request(conn: http.client.HTTPConnection, method: str, path: str, headers: dict, body: bytes | None = None
            ) -> tuple[int, bytes]:
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def wait_up(port: int, headers: dict, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit("gunicorn exited; see its log")
        try:
            status, _ = request(http.client.HTTPConnection("127.0.0.1", port, timeout=5), "GET", "/api/health",
                                headers)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit("gunicorn did not answer /api/health in time")


def load(port: int, headers: dict, bodies: list[tuple[bytes, str]], clients: int, seconds: float) -> dict:
    """``clients`` threads with keep-alive connections post diagnoses until the time is up."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    start = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine, errs, i = [], [], k
        start.wait()
        while time.perf_counter() < stop_at:
            body, ctype = bodies[i % len(bodies)]
            i += clients
            t0 = time.perf_counter()
            try:
                status, data = request(conn, "POST", "/api/predict", {**headers, "Content-Type": ctype}, body)
                ok = status == 200 and b'"label"' in data and b'"heatmap_png":"' in data
                if not ok:
                    errs.append(f"HTTP {status}: {data[:200]!r}")
            except (OSError, http.client.HTTPException) as exc:
                errs.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)
            errors.extend(errs)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed}


def usage(pid: int | None = None) -> tuple[float, float, int]:
    """User and system CPU seconds and minor page faults of a process (this one by default), from /proc
    (zeros where unavailable)."""
    try:
        fields = Path(f"/proc/{pid or 'self'}/stat").read_text().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick, int(fields[7])
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0, 0


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one by default), from /proc (0.0 where unavailable)."""
    user, system, _ = usage(pid)
    return user + system


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine (all processes), from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def tree_usage(pid: int) -> tuple[float, float, int]:
    """:func:`usage` of a process and its children (gunicorn's master and its worker), summed."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    parts = [usage(pid), *(tree_usage(int(c)) for c in children)]
    return sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts)
