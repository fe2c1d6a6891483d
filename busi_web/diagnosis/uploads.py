"""Uploaded images: checked, decoded and (only when ``STORE_UPLOADS`` says so) kept.

Every way an upload can be wrong becomes a :class:`~busi_web.errors.UserError`
naming the file and the fix, never a 500:

* zero bytes, not an image, an unsupported format, a truncated or corrupt
  file: 400;
* larger than ``MAX_UPLOAD_MB`` (the whole request is also capped by
  ``MAX_CONTENT_LENGTH``), or more pixels than ``MAX_IMAGE_PIXELS``
  (the decompression-bomb guard, checked from the header *before* decoding):
  413.

Memory stays bounded: an image is decoded no larger than ``MAX_IMAGE_SIDE``
on its longer side (JPEG in draft mode, others shrunk as soon as decoded),
and no more than ``DECODE_BUDGET_PIXELS`` are decoded at the same time.

Accepted formats: PNG, JPEG, BMP and TIFF (first page), and DICOM image instances (one frame of a cine
loop, the first unless ``frame`` says otherwise; see :mod:`busi_web.dicom.reading`). A DICOM upload carries
its modality and pixel spacing; ``STORE_UPLOADS`` keeps it de-identified
(:func:`busi_web.dicom.privacy.deidentified`), never as sent.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import pydicom
from flask import Flask
from PIL import Image, ImageFile, UnidentifiedImageError
from werkzeug.datastructures import FileStorage
from werkzeug.utils import secure_filename

from busi_web.dicom.privacy import deidentified
from busi_web.dicom.reading import DicomInfo, is_dicom, read_dicom
from busi_web.errors import UserError

# Pillow names; MPO is the multi-picture JPEG that many cameras write.
FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "BMP": "BMP", "DIB": "BMP", "TIFF": "TIFF"}
ACCEPTED = "PNG, JPEG, BMP, TIFF or DICOM"
MIN_SIDE = 8  # smaller images cannot be resized meaningfully for the network
# Modes Pillow's reduce() takes; others (palette, 1-bit, 16-bit) are converted first.
REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "I", "F", "CMYK"})
BUDGET = "busi_web.decode_budget"


@dataclass
class Upload:
    """One decoded upload: ``image`` is ``uint8`` ``(H, W)`` or ``(H, W, 3)``."""

    filename: str
    image: np.ndarray
    format: str
    size_bytes: int
    stored_path: str | None = None
    scale: float = 1.0  # pixels of ``image`` per pixel of the uploaded file (below 1 when it was shrunk)
    dicom: DicomInfo | None = None  # what a DICOM file says of itself

    @property
    def spacing_mm(self) -> tuple[float, float] | None:
        """``(row, column)`` mm per pixel of :attr:`image`, from the DICOM header; ``None`` when not known."""
        if self.dicom is None or self.dicom.spacing_mm is None:
            return None
        return (self.dicom.spacing_mm[0] / self.scale, self.dicom.spacing_mm[1] / self.scale)

    @property
    def scan_region(self) -> tuple[int, int, int, int] | None:
        """The ultrasound region the DICOM file names, in pixels of :attr:`image`; ``None`` when not named."""
        if self.dicom is None or self.dicom.scan_region is None:
            return None
        return tuple(int(round(v * self.scale)) for v in self.dicom.scan_region)  # type: ignore[return-value]


def display_name(file: FileStorage, index: int = 0) -> str:
    """The name to show in messages: the client's file name, without folders."""
    name = (file.filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:200] or f"upload #{index + 1}"


def _to_array(im: Image.Image) -> np.ndarray:
    """``uint8`` gray ``(H, W)`` or RGB ``(H, W, 3)``; 16-bit and float images are stretched to 0-255."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float32)
        finite = np.isfinite(arr)
        arr = np.where(finite, arr, 0.0)
        lo, hi = (float(arr[finite].min()), float(arr[finite].max())) if finite.any() else (0.0, 0.0)
        return (255.0 * (arr - lo) / max(hi - lo, 1e-6)).clip(0, 255).astype(np.uint8)
    if im.mode in ("1", "L", "LA", "La"):
        return np.asarray(im.convert("L"), dtype=np.uint8).copy()
    if im.mode == "P" and "transparency" not in im.info and im.palette is not None \
            and im.palette.mode == "L":
        return np.asarray(im.convert("L"), dtype=np.uint8).copy()
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


class PixelBudget:
    """How many pixels may be decoded at the same time (``DECODE_BUDGET_PIXELS``): a decode waits until the
    pixels already being decoded leave room for its own. One image over the whole budget decodes alone.

    Sixteen 36-Mpx uploads at once then decode one or two at a time instead of holding sixteen full-size
    bitmaps together; small images, far under the budget, never wait for each other.
    """

    def __init__(self, pixels: int):
        self.pixels = int(pixels)
        self.used = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int):
        if self.pixels <= 0:  # no budget: nothing waits
            yield
            return
        with self._cond:
            self._cond.wait_for(lambda: self.used == 0 or self.used + pixels <= self.pixels)
            self.used += pixels
        try:
            yield
        finally:
            with self._cond:
                self.used -= pixels
                self._cond.notify_all()


UNLIMITED = PixelBudget(0)


class _Borrowed:
    """A file handed to Pillow that Pillow may not close (the request still owns it: it may be stored next)."""

    def __init__(self, file: BinaryIO):
        self._file = file

    def __getattr__(self, name: str):
        return getattr(self._file, name)

    def close(self) -> None:
        """Pillow closes the files it reads; this one stays open for its owner."""


def _bomb(name: str, max_pixels: int) -> UserError:
    return UserError(f"{name} has more pixels than the limit of {max_pixels:,} (MAX_IMAGE_PIXELS); downscale the "
                     "image before uploading", 413)


def _reduced(im: Image.Image, max_side: int) -> Image.Image:
    """``im`` shrunk by a whole factor (a cheap box filter) while it stays over ``max_side``, before any copy."""
    factor = max(im.size) // max_side if max_side else 1
    if factor >= 2 and im.mode in REDUCIBLE:
        return im.reduce(factor)
    return im


def decode_image(source: bytes | BinaryIO, name: str, max_pixels: int, max_bytes: int | None = None, *,
                 max_side: int = 0, budget: PixelBudget = UNLIMITED) -> tuple[np.ndarray, str, float]:
    """Check and decode one uploaded image; raises :class:`UserError` (400/413) naming ``name``.

    ``source`` is the bytes or a readable binary file. The pixel limit is checked from the header, before any
    pixel is decoded. With ``max_side`` the image comes back no larger than that on its longer side: a JPEG
    is decoded at a reduced scale (draft mode), any other image is shrunk as soon as it is decoded, and the
    decoding itself waits for room in ``budget``. Returns the array, the format and the scale (returned
    pixels per uploaded pixel, 1.0 when it was not shrunk).
    """
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    check_size(stream, name, max_bytes)
    configure_pillow(max_pixels)
    try:
        im = Image.open(_Borrowed(stream))
    except Image.DecompressionBombError:
        raise _bomb(name, max_pixels) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise UserError(f"{name} is not an image that can be read; upload a {ACCEPTED} file", 400) from None
    with im:
        fmt = FORMATS.get(im.format or "")
        if fmt is None:
            raise UserError(f"{name} is a {im.format or 'unknown'} image; upload a {ACCEPTED} file "
                            "(convert it first)", 400)
        width, height = im.size
        # Checked from the header, before any pixel is decoded: this is the decompression-bomb guard.
        if width * height > max_pixels:
            raise UserError(f"{name} is {width}x{height} = {width * height:,} pixels, over the limit of "
                            f"{max_pixels:,} (MAX_IMAGE_PIXELS); downscale the image before uploading", 413)
        if min(width, height) < MIN_SIDE:
            raise UserError(f"{name} is only {width}x{height} pixels; upload an image at least "
                            f"{MIN_SIDE}x{MIN_SIDE} pixels", 400)
        try:
            im.seek(0)  # multi-page TIFF: the first page
            if max_side and max(width, height) > max_side and fmt == "JPEG":
                shrink = max_side / max(width, height)  # the decoder skips detail at 1/2, 1/4 or 1/8 scale
                im.draft(im.mode if im.mode in ("L", "RGB") else "RGB",
                         (max(1, round(width * shrink)), max(1, round(height * shrink))))
            with budget.hold(im.size[0] * im.size[1]):
                im.load()
                arr = _to_array(_reduced(im, max_side))
                im.close()  # the full-size bitmap goes before the next decode may start
        except Image.DecompressionBombError:
            raise _bomb(name, max_pixels) from None
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
            raise UserError(f"{name} is truncated or corrupt ({exc}); upload the complete {fmt} file again",
                            400) from None
    if max_side and max(arr.shape[:2]) > max_side:
        arr = fit_side(arr, max_side)
    return arr, fmt, arr.shape[1] / width


UPLOAD_ADVICE = ("an administrator can raise MAX_UPLOAD_MB (a full-field mammogram is 25 to 50 MB); or open the "
                 "image from the PACS on the Studies page, which takes the sizes modalities produce")


def check_size(stream: BinaryIO, name: str, max_bytes: int | None, what: str = "uploads",
               advice: str = UPLOAD_ADVICE) -> int:
    """The size of ``stream`` in bytes; :class:`UserError` when it is empty (400) or over ``max_bytes`` (413,
    saying ``what`` the limit is for and ``advice``, what an administrator can change)."""
    stream.seek(0, io.SEEK_END)
    size = stream.tell()
    stream.seek(0)
    if not size:
        raise UserError(f"{name} is empty (0 bytes); choose the image file again (it may not have finished "
                        "copying)", 400)
    if max_bytes is not None and size > max_bytes:
        raise UserError(f"{name} is {size / 2**20:.1f} MB, over this server's {max_bytes / 2**20:g} MB limit for "
                        f"{what}; {advice}", 413)
    return size


def decode_upload(stream: BinaryIO, name: str, max_pixels: int, max_bytes: int | None = None, *,
                  max_side: int = 0, budget: PixelBudget = UNLIMITED, frame: int | None = None,
                  limit: tuple[str, str] | None = None) -> Upload:
    """One uploaded file as an :class:`Upload`: a DICOM instance (``frame``, 1-based, of a multi-frame one) or
    an image file; shrunk to ``max_side``. ``limit``: what ``max_bytes`` is for and who can raise it, when not
    an upload's. Raises :class:`UserError` naming ``name`` and the fix."""
    size = check_size(stream, name, max_bytes, *(limit or ()))
    if not is_dicom(stream):
        if frame not in (None, 1):
            raise UserError(f"{name} is not a DICOM file, so it has no frame {frame}; leave the frame out", 400,
                            {"frame": "only for DICOM files"})
        # The size was checked above, so decode_image is given no byte limit.
        image, fmt, scale = decode_image(stream, name, max_pixels, None, max_side=max_side, budget=budget)
        return Upload(name, image, fmt, size, scale=scale)
    image, dicom = read_dicom(stream, name, max_pixels=max_pixels, frame=frame, hold=budget.hold)
    image = fit_side(image, max_side)
    return Upload(name, image, "DICOM", size, scale=image.shape[1] / dicom.columns, dicom=dicom)


def modality_of(uploads: list[Upload], asked: str | None) -> str | None:
    """The modality a request is for: ``asked``, else the one its DICOM files state (``None`` when neither
    says); a 400 when the files state different modalities or one other than ``asked``."""
    said = sorted({u.dicom.modality for u in uploads if u.dicom is not None and u.dicom.modality})
    if len(said) > 1:
        raise UserError(f"the files are of different modalities ({', '.join(said)}); send each modality in its "
                        "own request", 400, {"image": "one modality per request"})
    if said and asked and said[0] != asked:
        name = next(u.filename for u in uploads if u.dicom is not None and u.dicom.modality)
        raise UserError(f"{name} is a {said[0]} image, but modality {asked} was asked for; leave the modality "
                        f"out or choose {said[0]}", 400, {"modality": f"the file is {said[0]}"})
    return asked or (said[0] if said else None)


def fit_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` shrunk (area interpolation) so that its longer side is at most ``max_side``; as it is when so."""
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def read_uploads(app: Flask, files: list[FileStorage], user: str | None = None,
                 frame: int | None = None) -> list[Upload]:
    """Decode every uploaded file (all are checked before any is used); store them only if ``STORE_UPLOADS``.

    The files are read from werkzeug's spooled temporary files, never copied whole into memory; each is
    shrunk to ``MAX_IMAGE_SIDE`` as it is decoded, within the app's decode budget. ``frame`` (1-based) picks
    the frame of multi-frame DICOM files.
    """
    if not files:
        raise UserError("no image was sent; attach one or more files under the form field 'image'", 400)
    max_pixels = int(app.config["MAX_IMAGE_PIXELS"])
    max_bytes = int(app.config["MAX_CONTENT_LENGTH"])
    max_side = int(app.config.get("MAX_IMAGE_SIDE") or 0)
    budget = decode_budget(app)
    out = []
    for i, file in enumerate(files):
        name = display_name(file, i)
        out.append(decode_upload(file.stream, name, max_pixels, max_bytes, max_side=max_side, budget=budget,
                                 frame=frame))
        if app.config.get("STORE_UPLOADS"):
            if out[-1].dicom is None:
                out[-1].stored_path = str(store_upload(app, file.stream, name, user))
            else:  # de-identified, under a neutral name (an export's file name may be its patient's)
                out[-1].stored_path = str(store_upload(app, deidentified_bytes(file.stream), "instance.dcm", user))
    return out


def deidentified_bytes(stream: BinaryIO) -> bytes:
    """The DICOM file in ``stream`` (already read once without error) de-identified, as a Part 10 file."""
    stream.seek(0)
    ds = pydicom.dcmread(stream)
    buf = io.BytesIO()
    deidentified(ds).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def decode_budget(app: Flask) -> PixelBudget:
    """The app's :class:`PixelBudget` (``DECODE_BUDGET_PIXELS``, default ``MAX_IMAGE_PIXELS``; 0: none)."""
    budget = app.extensions.get(BUDGET)
    if budget is None:
        configured = app.config.get("DECODE_BUDGET_PIXELS")
        pixels = int(app.config["MAX_IMAGE_PIXELS"] if configured is None else configured)
        budget = app.extensions.setdefault(BUDGET, PixelBudget(pixels))
    return budget


def store_upload(app: Flask, data: bytes | BinaryIO, name: str, user: str | None = None) -> Path:
    """Keep the bytes (or the whole file) under ``<instance>/uploads/<YYYY-MM-DD>/`` with a unique name;
    returns the path."""
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    folder = Path(app.instance_path) / "uploads" / day
    folder.mkdir(parents=True, exist_ok=True)
    safe = secure_filename(name) or "upload"
    path = folder / f"{uuid.uuid4().hex[:12]}_{secure_filename(user or '') + '_' if user else ''}{safe}"
    # Patient images: readable by the service account only, from the moment the file exists.
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        if isinstance(data, (bytes, bytearray)):
            out.write(data)
        else:
            data.seek(0)
            shutil.copyfileobj(data, out)
    return path


def configure_pillow(max_pixels: int) -> None:
    """Let Pillow's own bomb check (it raises above twice its limit) allow at least ``MAX_IMAGE_PIXELS``.

    Our own check in :func:`decode_image` enforces the configured limit per app; Pillow's global limit is
    only ever raised here, never lowered, so apps with different limits in one process do not interfere.
    """
    Image.MAX_IMAGE_PIXELS = max(int(Image.MAX_IMAGE_PIXELS or 0), int(max_pixels))
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated upload is an error, not a half-grey image
