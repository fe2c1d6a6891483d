"""Memory of the serving worker: 16 concurrent uploads of 36-Mpx images, then a stream of 1,000 diagnoses.

In a temporary instance this script saves an untrained ``--backbone`` (the
product's default, ResNet50+CBAM at 224 px; memory does not depend on the
weights), makes it the default, starts a real gunicorn (one gthread worker,
16 threads) and reads the worker's resident memory from ``/proc`` (``VmRSS``
now, ``VmHWM`` the peak so far):

1. after a warm-up (the model loaded, every thread used once): the baseline;
2. ``--big`` clients each upload one 6000x6000 PNG at the same moment (36 Mpx,
   under the default 40-Mpx ``MAX_IMAGE_PIXELS``) and ask for the original, the
   overlay and the heatmap: the **peak** during the burst and the memory after;
3. ``--stream`` ordinary diagnoses (512x512 PNG phantoms, 4 clients): the
   memory after the first tenth and at the end; the **growth** between them.

4. ``--dicom`` clients each send one full-field-sized 16-bit DICOM (4096x3328,
   26 MB: what a mammography unit produces, and what the Studies page fetches
   from a PACS under ``MAX_PACS_MB``) at the same moment: the **peak**.

Goals (issue 18): peak under 1.5 GB, growth under 20 MB, no errors. Beside
it, in the same run, a server with the early downscaling, the decode budget
and the worker's malloc settings turned off takes ``--compare-big`` big uploads
(4, as in the attack report): the ratio of the two peaks is printed.

    python benchmarks/memory.py
    python benchmarks/memory.py --stream 200 --compare-big 0     # quicker, without the unbounded server
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import free_port, make_model, multipart, phantoms, request, start_server, wait_up  # noqa: E402

GOAL_PEAK_MB = 1500
GOAL_GROWTH_MB = 20


def worker_pid(master: int, timeout: float = 60) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.2)
    raise SystemExit("no gunicorn worker appeared")


def memory_mb(pid: int) -> dict[str, float]:
    """``rss`` and ``peak`` (VmHWM) of ``pid`` in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields["rss" if key == "VmRSS" else "peak"] = int(value.split()[0]) / 1024
    return fields


def big_png(side: int, seed: int) -> bytes:
    """A ``side`` x ``side`` RGB scan-like PNG: smooth shading, a few blobs, light noise (a few MB)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(40, 200, (side // 100, side // 100, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((side, side), Image.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def big_dicom(rows: int = 4096, cols: int = 3328) -> bytes:
    """A 16-bit grayscale DICOM of a full-field mammogram's size (about 26 MB), uncompressed, labelled US so the
    benchmark's ultrasound model answers (the decoding is the same for MG)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(1)
    pixels = (rng.integers(0, 4096, (rows // 8, cols // 8), dtype=np.uint16).repeat(8, 0).repeat(8, 1))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "US"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def diagnose_once(conn: http.client.HTTPConnection, headers: dict, body: tuple[bytes, str]) -> str | None:
    """POST one diagnosis on ``conn``: ``None`` when it was answered with a 200, else what went wrong."""
    try:
        status, data = request(conn, "POST", "/api/predict", {**headers, "Content-Type": body[1]}, body[0])
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if status == 200 else f"HTTP {status}: {data[:200]!r}"


def in_threads(target, n: int) -> None:
    """Run ``target`` in ``n`` threads at once and wait for them all."""
    threads = [threading.Thread(target=target) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def burst(port: int, headers: dict, body: tuple[bytes, str], clients: int) -> list[str]:
    """``clients`` threads post the same body at once; returns the errors."""
    errors: list[str] = []
    start = threading.Barrier(clients)

    def one() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        start.wait()
        error = diagnose_once(conn, headers, body)
        if error:
            errors.append(error)

    in_threads(one, clients)
    return errors


def stream(port: int, headers: dict, bodies: list[tuple[bytes, str]], total: int, clients: int,
           at: int, on_mark) -> list[str]:
    """``total`` diagnoses from ``clients`` threads; ``on_mark()`` is called once ``at`` of them are done."""
    errors: list[str] = []
    lock = threading.Lock()
    counter = {"sent": 0, "done": 0, "marked": False}

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                if counter["sent"] >= total:
                    return
                i = counter["sent"]
                counter["sent"] += 1
            error = diagnose_once(conn, headers, bodies[i % len(bodies)])
            if error:
                errors.append(error)
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)  # a fresh connection
            with lock:
                counter["done"] += 1
                mark = counter["done"] >= at and not counter["marked"]
                counter["marked"] |= mark
            if mark:
                on_mark()

    in_threads(client, clients)
    return errors


# What "unbounded" turns off: the early downscaling, the decode budget and the worker's malloc settings.
UNBOUNDED_CONFIG = "MAX_IMAGE_SIDE = 0\nDECODE_BUDGET_PIXELS = 0\n"
UNBOUNDED_ENV = {"MALLOC_MMAP_THRESHOLD": "0", "MALLOC_ARENA_MAX_WORKER": "0", "MALLOC_TRIM_THRESHOLD": "0",
                 "MALLOC_TRIM_EVERY": "0"}


def measure(inst: Path, tmp: Path, args, *, big: int, diagnoses: int, unbounded: bool, bodies: dict) -> dict:
    """Start a server on ``inst``, warm it up, send the burst and the stream; the worker's memory figures."""
    # The DICOM burst needs more than the 20 MB upload limit (a PACS instance has MAX_PACS_MB instead).
    (inst / "config.py").write_text(UNBOUNDED_CONFIG if unbounded else "MAX_UPLOAD_MB = 64\n")
    from busi_web.store import JobStore

    headers = {"Authorization": f"Bearer {JobStore(inst / 'busi.db', inst / 'runs').create_token('bench', 'b')}"}
    port = free_port()
    log = tmp / f"gunicorn-{'unbounded' if unbounded else 'bounded'}.log"
    proc = start_server(inst, port, args.threads, log, UNBOUNDED_ENV if unbounded else None)
    marks: dict[str, dict[str, float]] = {}
    try:
        wait_up(port, headers, proc)
        worker = worker_pid(proc.pid)
        errors = stream(port, headers, bodies["small"], 2 * args.threads, args.threads, 1, lambda: None)
        base = memory_mb(worker)
        t0 = time.perf_counter()
        big_errors = burst(port, headers, bodies["big"], big)
        burst_s = time.perf_counter() - t0
        after_burst = memory_mb(worker)
        t0 = time.perf_counter()
        stream_errors = stream(port, headers, bodies["small"], diagnoses, 4, max(1, diagnoses // 10),
                               lambda: marks.setdefault("tenth", memory_mb(worker))) if diagnoses else []
        stream_s = time.perf_counter() - t0
        end = memory_mb(worker)
        dicom_errors: list[str] = []
        if not unbounded and args.dicom:
            dicom_errors = burst(port, headers, bodies["dicom"], args.dicom)
        after_dicom = memory_mb(worker)
    finally:
        proc.terminate()
        proc.wait(60)
    tenth = marks.get("tenth", after_burst)
    return {"base": base, "after_burst": after_burst, "burst_s": burst_s, "tenth": tenth, "end": end,
            "stream_s": stream_s, "growth": end["rss"] - tenth["rss"], "big_errors": big_errors,
            "stream_errors": stream_errors, "errors": errors + big_errors + stream_errors + dicom_errors,
            "after_dicom": after_dicom, "dicom_errors": dicom_errors,
            "log": log.read_text(errors="replace")[-1500:]}


def report(name: str, m: dict, args, big: int, diagnoses: int) -> None:
    base, after = m["base"], m["after_burst"]
    print(f"[{name}] baseline after warm-up ({2 * args.threads} ordinary diagnoses, {args.threads} at a time): RSS "
          f"{base['rss']:.0f} MB, peak so far {base['peak']:.0f} MB")
    print(f"[{name}] {big} concurrent {args.side}x{args.side} uploads: peak {after['peak']:.0f} MB, RSS after "
          f"{after['rss']:.0f} MB, {m['burst_s']:.1f} s, {len(m['big_errors'])} errors")
    if diagnoses:
        print(f"[{name}] {diagnoses} diagnoses: RSS {m['tenth']['rss']:.0f} MB after the first tenth, "
              f"{m['end']['rss']:.0f} MB at the end: growth {m['growth']:+.1f} MB "
              f"({diagnoses / m['stream_s']:.1f} diagnoses/s), {len(m['stream_errors'])} errors")
    if args.dicom and name == "bounded":
        print(f"[{name}] {args.dicom} concurrent 26 MB full-field DICOMs: peak {m['after_dicom']['peak']:.0f} MB, "
              f"RSS after {m['after_dicom']['rss']:.0f} MB, {len(m['dicom_errors'])} errors")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="resnet50_cbam")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--image-size", type=int, default=512, help="side of the ordinary images of the stream")
    ap.add_argument("--big", type=int, default=16, help="concurrent 36-Mpx uploads")
    ap.add_argument("--side", type=int, default=6000, help="side of the big images")
    ap.add_argument("--stream", type=int, default=1000, help="ordinary diagnoses after the burst")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--dicom", type=int, default=8, help="concurrent full-field 16-bit DICOMs (26 MB) at the end")
    ap.add_argument("--compare-big", type=int, default=4,
                    help="concurrent big uploads for the unbounded server beside it (0: do not run it); the "
                         "attack report used 4, and 16 unbounded ones need about 10 GB")
    args = ap.parse_args(argv)
    args.untrained, args.train_epochs = True, 1

    print(f"memory benchmark: {args.backbone} @ {args.input_size} px, gunicorn gthread 1 worker x {args.threads} "
          f"threads; {args.big} concurrent {args.side}x{args.side} PNG uploads, then {args.stream} diagnoses of "
          f"{args.image_size} px images; beside it the same server unbounded (no early downscaling, no decode "
          f"budget, glibc's default malloc) with {args.compare_big} big uploads", flush=True)
    with tempfile.TemporaryDirectory(prefix="busi-memory-") as tmp:
        inst = Path(tmp) / "instance"
        make_model(inst, args)
        png = big_png(args.side, 0)
        small = []
        for i, img in enumerate(phantoms(32, args.image_size)):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "PNG")
            small.append(multipart(buf.getvalue(), f"phantom_{i}.png", "gradcam", "original,heatmap"))
        bodies = {"big": multipart(png, "big.png", "gradcam", "original,overlay,heatmap"), "small": small,
                  "dicom": multipart(big_dicom(), "ffdm.dcm", "gradcam", "original,heatmap")}
        print(f"big image: {args.side}x{args.side} RGB PNG, {len(png) / 2**20:.1f} MB", flush=True)
        bounded = measure(inst, Path(tmp), args, big=args.big, diagnoses=args.stream, unbounded=False,
                          bodies=bodies)
        report("bounded", bounded, args, args.big, args.stream)
        unbounded = None
        if args.compare_big:
            unbounded = measure(inst, Path(tmp), args, big=args.compare_big, diagnoses=0, unbounded=True,
                                bodies=bodies)
            report("unbounded", unbounded, args, args.compare_big, 0)

    peak = max(bounded["after_burst"]["peak"], bounded["after_dicom"]["peak"])
    out = {"baseline_mb": round(bounded["base"]["rss"]), "burst_peak_mb": round(peak),
           "after_burst_mb": round(bounded["after_burst"]["rss"]), "growth_mb": round(bounded["growth"], 1),
           "errors": len(bounded["errors"])}
    if unbounded is not None:
        theirs = unbounded["after_burst"]
        out.update(unbounded_burst_peak_mb=round(theirs["peak"]), unbounded_after_burst_mb=round(theirs["rss"]))
        print(f"side by side: bounded peak with {args.big} big uploads / unbounded peak with {args.compare_big}: "
              f"{peak / theirs['peak']:.2f}; memory kept after the burst: {bounded['after_burst']['rss']:.0f} vs "
              f"{theirs['rss']:.0f} MB ({bounded['after_burst']['rss'] / theirs['rss']:.2f})")
    print(json.dumps(out))
    if bounded["errors"]:
        print("errors:", bounded["errors"][:3], "\n", bounded["log"])
    ok = peak < GOAL_PEAK_MB and bounded["growth"] < GOAL_GROWTH_MB and not bounded["errors"]
    print(f"goal: peak < {GOAL_PEAK_MB} MB, growth < {GOAL_GROWTH_MB} MB, no errors: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
