"""DICOM image instances in every transfer syntax and photometric interpretation busi-web reads, made from
phantoms, decode to the pixels they hold; the header's modality, frames and spacing come with them; every
broken or unsuitable file is a 4xx that names the problem."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import convert_color_space
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless

from busi_web.dicom.reading import is_dicom, read_dicom
from busi_web.errors import UserError
from tests.dicom_phantoms import COMPRESSED, compressed, instance, phantom, report, to_bytes

LIMIT = 10**8
GRAY = phantom(seed=1)
RGB = np.stack([GRAY, GRAY // 2 + 60, 255 - GRAY], -1)
CINE = np.stack([phantom(seed=k, lesion=(30 + 10 * k, 40, 12)) for k in range(3)])


def read(ds, **kw):
    return read_dicom(to_bytes(ds), "case.dcm", max_pixels=kw.pop("max_pixels", LIMIT), **kw)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, *COMPRESSED], ids=lambda s: s.name.split(" (")[0])
@pytest.mark.parametrize("kind", ["gray", "rgb", "cine"])
def test_every_transfer_syntax_decodes_to_the_pixels(syntax, kind):
    pixels = {"gray": GRAY, "rgb": RGB, "cine": CINE}[kind]
    ds = instance(pixels, spacing=(0.08, 0.08))
    if syntax != ExplicitVRLittleEndian:
        compressed(ds, syntax)
    image, info = read(ds, frame=2 if kind == "cine" else None)
    expected = CINE[1] if kind == "cine" else pixels
    assert image.dtype == np.uint8 and image.shape == expected.shape
    if syntax == JPEGBaseline8Bit:  # lossy: the same pixels as Pillow's own decode of each frame
        frame = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))
        pillow = np.asarray(Image.open(io.BytesIO(frame[1 if kind == "cine" else 0])).convert(
            "RGB" if kind == "rgb" else "L"))
        gap = np.abs(image.astype(int) - pillow.astype(int))  # decoders upsample chroma differently
        assert gap.mean() < 1.0 and gap.max() <= 16
        assert np.abs(image.astype(int) - expected.astype(int)).mean() < (25 if kind == "rgb" else 3)
    else:
        assert np.array_equal(image, expected), syntax.name
    assert info.modality == "ultrasound" and info.dicom_modality == "US"
    assert info.frames == (3 if kind == "cine" else 1) and info.frame == (2 if kind == "cine" else 1)
    assert info.spacing_mm == (0.08, 0.08) and info.spacing_source == "PixelSpacing"
    assert info.transfer_syntax == syntax.name


def test_photometric_interpretations():
    inverted = instance(255 - GRAY, photometric="MONOCHROME1")
    assert np.array_equal(read(inverted)[0], GRAY)  # bright is dense, as on a MONOCHROME2 display
    ybr = instance(convert_color_space(RGB, "RGB", "YBR_FULL"), photometric="YBR_FULL")
    image, info = read(ybr)
    assert info.photometric == "YBR_FULL" and np.abs(image.astype(int) - RGB.astype(int)).max() <= 2


def test_mammogram_window_and_twelve_bits():
    pixels = GRAY.astype(np.uint16) * 16  # 12 bits stored
    image, info = read(instance(pixels, modality="MG", window=(2048, 4096)))
    assert info.modality == "mammography" and info.sop_class.startswith("Digital Mammography")
    assert np.abs(image.astype(int) - GRAY.astype(int)).max() <= 1
    narrow, _ = read(instance(pixels, modality="MG", window=(1024, 512)))  # values above the window are white
    assert narrow[pixels >= 1280].min() == 255 and narrow[pixels < 768].max() == 0
    stretched, _ = read(instance(pixels, modality="MG"))  # no window: the frame's own range
    assert stretched.min() == 0 and stretched.max() == 255


def test_spacing_from_ultrasound_regions():
    _, info = read(instance(GRAY, region_cm=(0.012, 0.01)))
    assert info.spacing_mm == pytest.approx((0.12, 0.1)) and info.spacing_source == "SequenceOfUltrasoundRegions"
    _, info = read(instance(GRAY))
    assert info.spacing_mm is None and info.describe()["pixel_spacing_mm"] is None


def test_describe_says_nothing_of_the_patient():
    _, info = read(instance(GRAY, spacing=(0.1, 0.1)))
    text = repr(info.describe()) + repr(info)
    for secret in ("TESTPATIENT", "PID-7781234", "ACC-99812", str(info.header.StudyInstanceUID)):
        assert secret not in text


def test_is_dicom_keeps_the_position():
    stream = io.BytesIO(to_bytes(instance(GRAY)))
    stream.seek(7)
    assert is_dicom(stream) and stream.tell() == 7
    assert not is_dicom(io.BytesIO(b"\x89PNG" + bytes(200)))


def refused(data: bytes, **kw) -> UserError:
    with pytest.raises(UserError) as caught:
        read_dicom(data, "case.dcm", max_pixels=kw.pop("max_pixels", LIMIT), **kw)
    return caught.value


def test_unsuitable_files_are_4xx_naming_the_fix():
    error = refused(to_bytes(report()))
    assert error.status == 400 and "Basic Text SR" in str(error) and "choose an image instance" in str(error)
    ct = instance(GRAY)
    ct.Modality = "CT"
    error = refused(to_bytes(ct))
    assert error.status == 400 and "CT image" in str(error) and "mammography (MG)" in str(error)
    error = refused(to_bytes(instance(CINE)), frame=4)
    assert error.status == 400 and "has 3 frames; choose a frame from 1 to 3" in str(error)
    error = refused(to_bytes(instance(GRAY)), max_pixels=5000)
    assert error.status == 413 and "MAX_IMAGE_PIXELS" in str(error)
    error = refused(to_bytes(instance(GRAY[:6, :6])))
    assert error.status == 400 and "at least 8x8" in str(error)
    video = instance(GRAY)
    video.PixelData, video.file_meta.TransferSyntaxUID = encapsulate([bytes(100)]), "1.2.840.10008.1.2.4.100"
    video["PixelData"].VR = "OB"
    error = refused(to_bytes(video))
    assert error.status == 400 and "compressed as MPEG2 Main Profile / Main Level" in str(error)


def test_damaged_files_are_400_and_never_quote_the_header():
    whole = to_bytes(compressed(instance(GRAY), JPEGBaseline8Bit))
    for data in (whole[:300], whole[: len(whole) - 900], bytes(128) + b"DICM" + b"\x02\x00" + bytes(30)):
        error = refused(data)
        assert error.status == 400 and "case.dcm" in str(error) and "export" in str(error)
        assert "TESTPATIENT" not in str(error)


SAMPLES = [to_bytes(instance(GRAY, spacing=(0.1, 0.1))), to_bytes(compressed(instance(RGB), JPEGBaseline8Bit)),
           to_bytes(compressed(instance(CINE), RLELossless))]


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 150)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(sample=st.integers(0, len(SAMPLES) - 1), cut=st.integers(0, 20_000),
       flips=st.lists(st.tuples(st.integers(0, 20_000), st.integers(0, 255)), max_size=6))
def test_a_damaged_file_is_a_400_or_an_image_never_a_crash(sample, cut, flips):
    data = bytearray(SAMPLES[sample][: max(cut, 132)])
    for where, byte in flips:
        if 132 <= where < len(data):  # the preamble and magic stay: the file is still taken for DICOM
            data[where] = byte
    try:
        image, _info = read_dicom(bytes(data), "case.dcm", max_pixels=LIMIT)
    except UserError as error:
        assert error.status in (400, 413) and "case.dcm" in str(error)
    else:
        assert image.dtype == np.uint8 and image.ndim in (2, 3)


def test_palette_colour_is_read_through_its_lookup_table():
    """pydicom ships an ultrasound image in PALETTE COLOR; its colours come out as pydicom's own LUT gives them."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_color_lut

    path = get_testdata_file("examples_palette.dcm", download=False)
    with open(path, "rb") as f:
        image, info = read_dicom(f.read(), "palette.dcm", max_pixels=LIMIT)
    expected = apply_color_lut(dcmread(path).pixel_array, dcmread(path))
    assert info.photometric == "PALETTE COLOR" and image.shape == (350, 800, 3)
    assert expected.max() > 255  # 16-bit table entries, brought to 8 bits
    assert np.abs(image.astype(int) - np.rint(expected / 257).astype(int)).max() <= 1 and image.max() < 255
