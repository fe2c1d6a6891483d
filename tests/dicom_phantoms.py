"""DICOM files made from phantoms for the tests: ultrasound and mammography instances in every transfer
syntax and photometric interpretation busi-web reads, with made-up patient data the tests then look for.

Uncompressed, RLE, JPEG-LS and JPEG 2000 are encoded by pydicom (with pyjpegls and pylibjpeg-openjpeg);
JPEG baseline by Pillow and JPEG lossless (process 14, first-order prediction) by imagecodecs, each
encapsulated by pydicom.
"""

from __future__ import annotations

import io
from datetime import date

import imagecodecs
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

# Made-up identifiers; a test fails if any of them turns up in an answer, a log or the audit.
PATIENT_NAME = "TESTPATIENT^JANE"
PATIENT_ID = "PID-7781234"
ACCESSION = "ACC-99812"
SOP_CLASSES = {
    ("US", 1): "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    ("US", 2): "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
    ("MG", 1): "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography X-Ray Image Storage - For Presentation
}
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
COMPRESSED = (RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1)


def phantom(side: int = 96, seed: int = 0, lesion: tuple[int, int, int] | None = (48, 40, 14)) -> np.ndarray:
    """An ultrasound-like picture (``uint8``): speckle, a dark fat band, a dark oval lesion at ``(x, y, r)``."""
    rng = np.random.default_rng(seed)
    img = rng.gamma(2.0, 40.0, (side, side)).clip(0, 255)
    img[: side // 6] *= 0.4
    if lesion:
        yy, xx = np.mgrid[:side, :side]
        x, y, r = lesion
        img[((xx - x) / (1.4 * r)) ** 2 + ((yy - y) / r) ** 2 <= 1] *= 0.15
    return img.astype(np.uint8)


def instance(pixels: np.ndarray, *, modality: str = "US", photometric: str | None = None,
             spacing: tuple[float, float] | None = None, region_cm: tuple[float, float] | None = None,
             window: tuple[float, float] | None = None, study_uid: str | None = None,
             series_uid: str | None = None, sop_class: str | None = None) -> Dataset:
    """An uncompressed instance holding ``pixels`` (``(H, W)``, ``(H, W, 3)``, or frames first when 4-D or
    when a 3-D array's last axis is not 3), with the made-up patient, a study and a series."""
    colour = pixels.shape[-1] == 3 and pixels.ndim in (3, 4)
    frames = pixels.shape[0] if pixels.ndim == (4 if colour else 3) else 1
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class or SOP_CLASSES[(modality, 2 if frames > 1 else 1)]
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName, ds.PatientID, ds.AccessionNumber = PATIENT_NAME, PATIENT_ID, ACCESSION
    ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date.today().strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101010"
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, 1
    ds.ReferringPhysicianName, ds.InstitutionName = "REFERRER^ANNA", "Test Hospital"
    ds.StudyDescription = "Breast ultrasound" if modality == "US" else "Mammogram"
    ds.Modality = modality
    ds.Manufacturer = "busi-web tests"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric or ("RGB" if colour else "MONOCHROME2")
    if colour:
        ds.PlanarConfiguration = 0
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits if bits == 8 else 12, (bits if bits == 8 else 12) - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameTime = 33.3
    if spacing:
        ds.PixelSpacing = [f"{spacing[0]:g}", f"{spacing[1]:g}"]
    if region_cm:
        region = Dataset()
        region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
        region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
        region.RegionLocationMaxX1, region.RegionLocationMaxY1 = int(ds.Columns) - 1, int(ds.Rows) - 1
        region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
        region.PhysicalDeltaX, region.PhysicalDeltaY = region_cm[1], region_cm[0]
        ds.SequenceOfUltrasoundRegions = Sequence([region])
    if window:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def _frames(ds: Dataset) -> list[np.ndarray]:
    arr = np.frombuffer(ds.PixelData, np.uint8 if ds.BitsAllocated == 8 else np.uint16)
    shape = (int(ds.get("NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns))
    return list(arr.reshape(shape + ((3,) if ds.SamplesPerPixel == 3 else ())))


def compressed(ds: Dataset, syntax: str) -> Dataset:
    """``ds`` (uncompressed, from :func:`instance`) re-encoded as ``syntax``, in place; returns it."""
    if syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        ds.compress(syntax)
        return ds
    frames = []
    for frame in _frames(ds):
        if syntax == JPEGBaseline8Bit:
            buf = io.BytesIO()
            Image.fromarray(frame).save(buf, "JPEG", quality=95)
            frames.append(buf.getvalue())
        elif syntax == JPEGLosslessSV1:
            frames.append(bytes(imagecodecs.jpeg8_encode(frame, lossless=True, predictor=1,
                                                         bitspersample=int(ds.BitsStored))))
        else:
            raise ValueError(f"no encoder here for {syntax}")
    if syntax == JPEGBaseline8Bit and ds.SamplesPerPixel == 3:
        ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def to_bytes(ds: Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def report(study_uid: str | None = None) -> Dataset:
    """A Basic Text SR: a DICOM object with no image."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = PATIENT_NAME, PATIENT_ID, "SR"
    ds.ValueType = "CONTAINER"
    return ds


def with_unknown_syntax(ds: Dataset, syntax: str, fragment: bytes = b"\xff\x0a" + b"\x00" * 64) -> bytes:
    """``ds`` as a Part 10 file whose pixel data claims ``syntax``, a transfer syntax pydicom cannot write (JPEG XL,
    say): the file meta is written by hand, the dataset as explicit VR little endian with one encapsulated
    fragment."""
    import struct

    from pydicom.encaps import encapsulate
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    def element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\0"
        if vr in (b"OB", b"UN"):
            return struct.pack("<HH", group, elem) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
        return struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value

    body = Dataset()
    for elem in ds:
        if elem.tag != 0x7FE00010:
            body.add(elem)
    body.PixelData = encapsulate([fragment])
    body["PixelData"].VR = "OB"
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, body)
    meta = (element(2, 1, b"OB", b"\0\1") + element(2, 2, b"UI", str(ds.SOPClassUID).encode())
            + element(2, 3, b"UI", str(ds.SOPInstanceUID).encode()) + element(2, 0x10, b"UI", syntax.encode())
            + element(2, 0x12, b"UI", b"1.2.3.4"))
    return (b"\0" * 128 + b"DICM" + element(2, 0, b"UL", struct.pack("<I", len(meta))) + meta
            + out.getvalue())
