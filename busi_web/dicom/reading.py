"""One DICOM image instance to pixels the model takes, with what the header says about them.

:func:`read_dicom` checks the header before any pixel is decoded (an image SOP class, a modality busi-web
diagnoses, a transfer syntax it can decode, the pixel limit), decodes only the frame asked for, and turns it
into ``uint8``:

* grayscale (MONOCHROME1/2): the modality LUT (rescale), then the VOI window the file gives (the DICOM
  linear window, or its VOI LUT), else the frame's own range; MONOCHROME1 is inverted so that bright means
  dense, as on a MONOCHROME2 display;
* colour (RGB, YBR_FULL, YBR_FULL_422 and the JPEG YBR forms, PALETTE COLOR): RGB.

Every problem is a :class:`~busi_web.errors.UserError` (400/413) that names the file and the fix. Messages
never quote header values: they could be patient data.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import parse_basic_offsets, parse_fragments
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from busi_web.dicom.privacy import quiet
from busi_web.errors import UserError

# DICOM Modality (0008,0060) to the modality names of busi-web's datasets and models.
MODALITIES = {"US": "ultrasound", "MG": "mammography"}
# Modalities that say nothing about what the image shows (other, secondary capture): the request decides.
UNSTATED = frozenset({"", "OT", "SC"})
MIN_SIDE = 8
PREAMBLE = 128  # bytes before the "DICM" magic of a DICOM Part 10 file
MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage: a DICOMDIR
PIXEL_DATA = 0x7FE00010


@dataclass
class DicomInfo:
    """What a DICOM image instance says of itself and of the frame read from it.

    ``spacing_mm`` is ``(row, column)`` in mm per pixel of the *file* (before any shrinking), with the
    attribute it came from in ``spacing_source``. ``header`` is the dataset without its pixel data: it holds
    patient data and stays in memory, never in a log, an audit row or an answer.
    """

    modality: str | None  # busi-web's name ("ultrasound", "mammography"), None when the file does not say
    dicom_modality: str
    frame: int  # 1-based, as DICOM numbers frames
    frames: int
    rows: int
    columns: int
    photometric: str
    transfer_syntax: str
    sop_class: str
    spacing_mm: tuple[float, float] | None = None
    spacing_source: str | None = None
    header: Dataset = field(default_factory=Dataset, repr=False)
    manufacturer: str | None = None  # the scanner (Manufacturer, ManufacturerModelName): not patient data
    model_name: str | None = None
    scan_region: tuple[int, int, int, int] | None = None  # the B-mode region (left, top, right, bottom), file pixels

    def describe(self) -> dict:
        """What an answer may say of the file: no identifiers, no UIDs."""
        return {"modality": self.dicom_modality or None, "frame": self.frame, "frames": self.frames,
                "rows": self.rows, "columns": self.columns, "photometric": self.photometric,
                "transfer_syntax": self.transfer_syntax, "sop_class": self.sop_class,
                "pixel_spacing_mm": None if self.spacing_mm is None else list(self.spacing_mm),
                "pixel_spacing_source": self.spacing_source, "manufacturer": self.manufacturer,
                "model_name": self.model_name,
                "scan_region": None if self.scan_region is None else list(self.scan_region)}


def is_dicom(stream: BinaryIO) -> bool:
    """Whether ``stream`` is a DICOM Part 10 file (``DICM`` after the 128-byte preamble); the position is kept."""
    start = stream.tell()
    try:
        stream.seek(0)
        head = stream.read(PREAMBLE + 4)
    finally:
        stream.seek(start)
    return len(head) == PREAMBLE + 4 and head[PREAMBLE:] == b"DICM"


def _header(stream: BinaryIO, name: str) -> Dataset:
    """The header, every element parsed now (pydicom parses lazily: a damaged value would fail later)."""
    stream.seek(0)
    try:
        ds = pydicom.dcmread(stream, stop_before_pixels=True)
        for _ in (*ds.file_meta.iterall(), *ds.iterall()):
            pass
        return ds
    # A damaged file can make pydicom fail in many ways (its own errors, struct, unicode, ...): all of them mean
    # "this header cannot be read", from untrusted bytes.
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{name} is a damaged DICOM file (its header cannot be read: {type(exc).__name__}); "
                        "export the instance from the PACS again", 400) from None


def _frames_held(stream: BinaryIO, pixels: BinaryIO | Dataset, ds: Dataset, rows: int, cols: int,
                 encapsulated: bool) -> int:
    """How many frames the pixel data really holds: its fragments (compressed: at least one per frame), or its
    length over one frame's bytes (native); a large number when it cannot be told here (the decoder decides)."""
    unknown = 2**31
    try:
        if encapsulated:
            data = pixels.PixelData if isinstance(pixels, Dataset) else b""
            offsets = parse_basic_offsets(data)
            table = 8 + 4 * len(offsets)  # the item tag and length, then the offsets
            return len(offsets) or parse_fragments(data[table:])[0]
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frame_bytes = rows * cols * samples * max(1, int(ds.get("BitsAllocated", 8) or 8)) // 8
        if isinstance(pixels, Dataset):
            length = len(pixels.PixelData)
        else:
            stream.seek(0)
            # Deferred reading leaves the pixel data unread: its raw element knows its length.
            length = int(pydicom.dcmread(stream, defer_size=256).get_item(PIXEL_DATA, keep_deferred=True).length)
        return length // frame_bytes if frame_bytes else unknown
    except Exception:  # noqa: BLE001 - an odd layout: let the decoder say what is wrong
        return unknown
    finally:
        stream.seek(0)


def _decodable(syntax: UID) -> bool:
    """Whether an installed decoder reads pixel data compressed as ``syntax`` (MPEG and other video: none)."""
    try:
        return bool(get_decoder(syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


def _whole(stream: BinaryIO, name: str) -> Dataset:
    """The whole dataset of an encapsulated (compressed) file; pydicom leaves out pixel data cut short."""
    stream.seek(0)
    try:
        ds = pydicom.dcmread(stream)
    except Exception:  # noqa: BLE001 - damaged data, as in _header: said below
        ds = Dataset()
    if "PixelData" not in ds:
        raise UserError(f"{name}: its pixel data is truncated or corrupt (the compressed frames end early); "
                        "export the instance from the PACS again", 400)
    return ds


# Transfer syntaxes newer than the DICOM libraries here, by name (DICOM PS3.6, table A-1).
NEWER_SYNTAXES = {"1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
                  "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression", "1.2.840.10008.1.2.4.112": "JPEG XL"}


def syntax_name(uid: str) -> str:
    """A transfer syntax as people name it, with its UID (``JPEG XL Lossless (1.2.840.10008.1.2.4.110)``)."""
    uid = str(uid or "").strip()
    if not uid or uid == "unknown":
        return "an unknown transfer syntax"
    name = NEWER_SYNTAXES.get(uid) or UID(uid).name
    return f"{name} ({uid})" if name != uid else f"transfer syntax {uid}"


def _uid_name(uid: object) -> str:
    text = str(uid or "").strip()
    if not text:
        return "unknown"
    name = UID(text).name
    return name if name != text else f"unknown ({text})"


def _spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str | None]:
    """``(row, column)`` mm per pixel, and where it came from: Pixel Spacing (also in an enhanced object's
    shared functional groups), Imager Pixel Spacing (at the detector), or the ultrasound regions' physical
    deltas (cm per pixel, when both directions are in cm)."""
    def pair(value) -> tuple[float, float] | None:
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            return None
        return (row, col) if 0 < row < 100 and 0 < col < 100 else None

    candidates = [(ds.get("PixelSpacing"), "PixelSpacing")]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        measures = shared[0].get("PixelMeasuresSequence")
        if measures:
            candidates.append((measures[0].get("PixelSpacing"), "PixelMeasuresSequence"))
    candidates.append((ds.get("ImagerPixelSpacing"), "ImagerPixelSpacing"))
    for value, source in candidates:
        found = pair(value) if value is not None else None
        if found:
            return found, source
    regions = [r for r in ds.get("SequenceOfUltrasoundRegions") or []
               if r.get("PhysicalUnitsXDirection") == 3 and r.get("PhysicalUnitsYDirection") == 3]
    if regions:  # the largest region in cm: the B-mode image, not a small Doppler strip
        def area(r: Dataset) -> int:
            return abs(int(r.get("RegionLocationMaxX1", 0)) - int(r.get("RegionLocationMinX0", 0))) * \
                abs(int(r.get("RegionLocationMaxY1", 0)) - int(r.get("RegionLocationMinY0", 0)))
        region = max(regions, key=area)
        deltas = (region.get("PhysicalDeltaY", 0), region.get("PhysicalDeltaX", 0))
        found = pair(tuple(abs(float(d)) * 10 for d in deltas))
        if found:
            return found, "SequenceOfUltrasoundRegions"
    return None, None


def scan_region_of(ds: Dataset, rows: int, cols: int) -> tuple[int, int, int, int] | None:
    """The largest tissue region of a ``SequenceOfUltrasoundRegions`` (RegionSpatialFormat 1, a 2-D image), as
    ``(left, top, right, bottom)`` in pixels (right and bottom exclusive); ``None`` when the file names none."""
    found = []
    for r in ds.get("SequenceOfUltrasoundRegions") or []:
        try:
            if int(r.get("RegionSpatialFormat", 1)) != 1:
                continue
            x0, y0 = int(r.RegionLocationMinX0), int(r.RegionLocationMinY0)
            x1, y1 = int(r.RegionLocationMaxX1), int(r.RegionLocationMaxY1)
        except (AttributeError, TypeError, ValueError):
            continue
        left, right = sorted((max(0, min(x0, cols - 1)), max(0, min(x1, cols - 1))))
        top, bottom = sorted((max(0, min(y0, rows - 1)), max(0, min(y1, rows - 1))))
        if right > left and bottom > top:
            found.append((left, top, right + 1, bottom + 1))
    return max(found, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])) if found else None


def _text(value: object) -> str | None:
    text = str(value or "").strip()
    return text[:64] or None


def _to_uint8(arr: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":  # indices through the file's colour tables, 8 or 16 bits an entry
        descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
        lut_bits = int(descriptor[2]) if descriptor is not None and int(descriptor[2]) in (8, 16) else 16
        rgb = apply_color_lut(arr, ds).astype(np.float32) * (255.0 / (2 ** lut_bits - 1))
        return np.rint(rgb).clip(0, 255).astype(np.uint8)
    if arr.ndim == 3:  # colour, already RGB (pydicom converts the YBR forms)
        arr = arr.astype(np.float32)
        bits = int(ds.get("BitsStored", 8) or 8)
        return (arr * (255.0 / (2 ** bits - 1)) if bits != 8 and arr.max() > 255 else arr).clip(0, 255) \
            .astype(np.uint8)
    # float32 throughout, changed in place: a full-field mammogram (13.6 Mpx) costs one 54 MB buffer beside its
    # pixels, not five float64 ones (benchmarks/memory.py's burst of DICOMs).
    arr = apply_modality_lut(arr, ds).astype(np.float32, copy=False)
    if ds.get("VOILUTSequence") or ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
        if ds.get("VOILUTSequence") or str(ds.get("VOILUTFunction", "LINEAR")).upper() != "LINEAR":
            arr = apply_voi_lut(arr, ds, index=0).astype(np.float32, copy=False)
            low, high = float(arr.min()), float(arr.max())
        else:  # the DICOM linear window (PS3.3 C.11.2.1.2.1), first of several
            center = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
            width = max(float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width), 1.0)
            low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    else:
        low, high = float(arr.min()), float(arr.max())
        if not (np.isfinite(low) and np.isfinite(high)):  # float pixel data with NaN or infinities (rare)
            finite = arr[np.isfinite(arr)]
            low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if not arr.flags.writeable or arr.base is not None:
        arr = arr.copy()  # a view of the decoded pixels: do not write into them
    np.subtract(arr, np.float32(low), out=arr)
    np.multiply(arr, np.float32(255.0 / max(high - low, 1e-6)), out=arr)
    np.clip(arr, 0, 255, out=arr)
    if photometric == "MONOCHROME1":
        np.subtract(np.float32(255.0), arr, out=arr)
    return arr.astype(np.uint8)


def read_dicom(source: bytes | BinaryIO, name: str, *, max_pixels: int, frame: int | None = None,
               hold: Callable[[int], AbstractContextManager] = lambda pixels: nullcontext()
               ) -> tuple[np.ndarray, DicomInfo]:
    """:func:`_read` with the DICOM libraries' warnings kept out of the log (they quote attribute values)."""
    with quiet():
        return _read(source, name, max_pixels=max_pixels, frame=frame, hold=hold)


def _read(source: bytes | BinaryIO, name: str, *, max_pixels: int, frame: int | None = None,
          hold: Callable[[int], AbstractContextManager] = lambda pixels: nullcontext()
          ) -> tuple[np.ndarray, DicomInfo]:
    """Check and decode ``frame`` (1-based; default the first) of the DICOM file ``source``: the frame as
    ``uint8`` ``(H, W)`` or ``(H, W, 3)``, and what the file says of it.

    The header is read first (without the pixel data); the rows × columns of one frame must be within
    ``max_pixels``; decoding one frame happens inside ``hold(pixels)`` (a decode budget). Raises
    :class:`UserError` (400 for damaged, non-image, unsupported or out-of-range, 413 over the pixel limit).
    """
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    ds = _header(stream, name)
    meta = getattr(ds, "file_meta", None)
    if str(meta.get("MediaStorageSOPClassUID", "") if meta is not None else "") == MEDIA_DIRECTORY:
        raise UserError(f"{name} is a DICOMDIR (the index of a CD, DVD or USB export), not an image: open one of the "
                        "image files it lists, in the folders beside it", 400)
    if "SOPClassUID" not in ds:  # pydicom stops quietly where a file is cut short
        raise UserError(f"{name} is an incomplete or damaged DICOM file (it has no SOP class); export the instance "
                        "from the PACS again", 400)
    sop_class = _uid_name(ds.get("SOPClassUID"))
    meta = getattr(ds, "file_meta", None)
    syntax = UID(str(meta.get("TransferSyntaxUID", "") if meta is not None else "") or "1.2.840.10008.1.2")
    if "PixelData" not in ds and "Rows" not in ds and "Image Storage" not in sop_class:
        raise UserError(f"{name} is a DICOM {sop_class} object with no image (a report, a presentation state or a "
                        "document); choose an image instance of the study (ultrasound or mammography)", 400)
    modality_code = str(ds.get("Modality", "") or "").strip().upper()
    if modality_code not in MODALITIES and modality_code not in UNSTATED:
        raise UserError(f"{name} is a DICOM {modality_code} image; busi-web diagnoses breast ultrasound (US) and "
                        "mammography (MG) images only", 400)
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        photometric = str(ds.PhotometricInterpretation).strip().upper()
    except (AttributeError, TypeError, ValueError):
        raise UserError(f"{name} lacks its image description (rows, columns, photometric interpretation); "
                        "export the instance from the PACS again", 400) from None
    if rows * cols > max_pixels:
        raise UserError(f"{name} is {cols}x{rows} = {rows * cols:,} pixels, over the limit of {max_pixels:,} "
                        "(MAX_IMAGE_PIXELS); ask an administrator to raise the limit", 413)
    if min(rows, cols) < MIN_SIDE:
        raise UserError(f"{name} is only {cols}x{rows} pixels; busi-web needs at least {MIN_SIDE}x{MIN_SIDE}", 400)
    try:
        compressed, encapsulated = syntax.is_compressed, syntax.is_encapsulated
    except ValueError:  # private or damaged: not a transfer syntax pydicom knows
        raise UserError(f"{name} is encoded as {syntax_name(str(syntax))}, which this server cannot decode; export "
                        "it uncompressed or as JPEG, JPEG-LS, JPEG 2000 or RLE", 400) from None
    if compressed and not _decodable(syntax):
        raise UserError(f"{name} is compressed as {syntax.name}, which this server cannot decode; export it "
                        "uncompressed or as JPEG, JPEG-LS, JPEG 2000 or RLE", 400)
    pixels: BinaryIO | Dataset = stream
    # Compressed frames are read whole (as sent, no larger) to see that none is cut; a deflated file is inflated
    # as a whole too (its pixels cannot be read from the stream where they lie).
    if encapsulated or syntax == DeflatedExplicitVRLittleEndian:
        pixels = _whole(stream, name)
    # A file may claim more frames than it holds (NumberOfFrames 10,000, one frame of pixels): it offers the ones
    # it holds, and one that holds none is truncated.
    declared = frames
    frames = min(frames, _frames_held(stream, pixels, ds, rows, cols, encapsulated))
    if frames < 1:
        raise UserError(f"{name}: its pixel data is truncated (not one whole frame); export the instance from the "
                        "PACS again", 400)
    chosen = 1 if frame is None else int(frame)
    if not 1 <= chosen <= frames:
        raise UserError(f"{name} has {frames} frame{'s' if frames != 1 else ''}; choose a frame from 1 to {frames}",
                        400, {"frame": f"1 to {frames}"})
    stream.seek(0)
    try:
        with hold(rows * cols):
            raw = pixel_array(pixels, index=chosen - 1 if declared > 1 else None)
            image = _to_uint8(raw, ds, photometric)
    except (NotImplementedError, RuntimeError) as exc:
        raise UserError(f"{name}: its pixel data ({syntax.name}, {photometric}) cannot be decoded here "
                        f"({type(exc).__name__}); export it uncompressed", 400) from None
    except UserError:
        raise
    # As for the header: the decoders (pydicom, pylibjpeg, pyjpegls, Pillow) fail on damaged data in many ways.
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{name}: its pixel data is truncated or corrupt ({type(exc).__name__}); export the "
                        "instance from the PACS again", 400) from None
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    try:
        spacing, spacing_source = _spacing(ds)
    except (TypeError, ValueError, AttributeError, OverflowError):  # an odd value: no spacing, not an error
        spacing, spacing_source = None, None
    return np.ascontiguousarray(image), DicomInfo(
        modality=MODALITIES.get(modality_code), dicom_modality=modality_code, frame=chosen, frames=frames,
        rows=rows, columns=cols, photometric=photometric, transfer_syntax=syntax.name, sop_class=sop_class,
        spacing_mm=spacing, spacing_source=spacing_source, header=ds,
        manufacturer=_text(ds.get("Manufacturer")), model_name=_text(ds.get("ManufacturerModelName")),
        scan_region=scan_region_of(ds, rows, cols))
