"""Uploaded images: checked, decoded and (only when ``STORE_UPLOADS`` says so) kept.

Every way an upload can be wrong becomes a :class:`~busi_web.errors.UserError`
naming the file and the fix, never a 500:

* zero bytes, not an image, an unsupported format, a truncated or corrupt
  file: 400;
* larger than ``MAX_UPLOAD_MB`` (the whole request is also capped by
  ``MAX_CONTENT_LENGTH``), or more pixels than ``MAX_IMAGE_PIXELS``
  (the decompression-bomb guard, checked from the header *before* decoding):
  413.

Accepted formats: PNG, JPEG, BMP and TIFF (first page).
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from flask import Flask
from PIL import Image, ImageFile, UnidentifiedImageError
from werkzeug.datastructures import FileStorage
from werkzeug.utils import secure_filename

from busi_web.errors import UserError

# Pillow names; MPO is the multi-picture JPEG that many cameras write.
FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "BMP": "BMP", "DIB": "BMP", "TIFF": "TIFF"}
ACCEPTED = "PNG, JPEG, BMP or TIFF"
MIN_SIDE = 8  # smaller images cannot be resized meaningfully for the network


@dataclass
class Upload:
    """One decoded upload: ``image`` is ``uint8`` ``(H, W)`` or ``(H, W, 3)``."""

    filename: str
    image: np.ndarray
    format: str
    size_bytes: int
    stored_path: str | None = None


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


def decode_image(data: bytes, name: str, max_pixels: int, max_bytes: int | None = None) -> tuple[np.ndarray, str]:
    """Check and decode the bytes of one uploaded image; raises :class:`UserError` (400/413) naming ``name``."""
    if not data:
        raise UserError(f"{name} is empty (0 bytes); choose the image file again (it may not have finished "
                        "copying)", 400)
    if max_bytes is not None and len(data) > max_bytes:
        raise UserError(f"{name} is {len(data) / 2**20:.1f} MB, over the {max_bytes / 2**20:g} MB upload limit; "
                        "send a smaller image (an administrator can raise MAX_UPLOAD_MB)", 413)
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise UserError(f"{name} is too large to decode safely ({exc}); downscale it", 413) from None
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
            im.load()
            arr = _to_array(im)
        except Image.DecompressionBombError as exc:
            raise UserError(f"{name} is too large to decode safely ({exc}); downscale it", 413) from None
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
            raise UserError(f"{name} is truncated or corrupt ({exc}); upload the complete {fmt} file again",
                            400) from None
    return arr, fmt


def read_uploads(app: Flask, files: list[FileStorage], user: str | None = None) -> list[Upload]:
    """Decode every uploaded file (all are checked before any is used); store them only if ``STORE_UPLOADS``."""
    if not files:
        raise UserError("no image was sent; attach one or more files under the form field 'image'", 400)
    max_pixels = int(app.config["MAX_IMAGE_PIXELS"])
    max_bytes = int(app.config["MAX_CONTENT_LENGTH"])
    out = []
    for i, file in enumerate(files):
        name = display_name(file, i)
        data = file.read()
        image, fmt = decode_image(data, name, max_pixels, max_bytes)
        out.append(Upload(name, image, fmt, len(data)))
        if app.config.get("STORE_UPLOADS"):
            out[-1].stored_path = str(store_upload(app, data, name, user))
    return out


def store_upload(app: Flask, data: bytes, name: str, user: str | None = None) -> Path:
    """Keep the bytes under ``<instance>/uploads/<YYYY-MM-DD>/`` with a unique name; returns the path."""
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    folder = Path(app.instance_path) / "uploads" / day
    folder.mkdir(parents=True, exist_ok=True)
    safe = secure_filename(name) or "upload"
    path = folder / f"{uuid.uuid4().hex[:12]}_{secure_filename(user or '') + '_' if user else ''}{safe}"
    path.write_bytes(data)
    path.chmod(0o600)  # patient images: readable by the service account only
    return path


def configure_pillow(max_pixels: int) -> None:
    """Let Pillow's own bomb check (it raises above twice its limit) allow at least ``MAX_IMAGE_PIXELS``.

    Our own check in :func:`decode_image` enforces the configured limit per app; Pillow's global limit is
    only ever raised here, never lowered, so apps with different limits in one process do not interfere.
    """
    Image.MAX_IMAGE_PIXELS = max(int(Image.MAX_IMAGE_PIXELS or 0), int(max_pixels))
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated upload is an error, not a half-grey image
