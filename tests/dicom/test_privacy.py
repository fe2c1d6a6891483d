"""What busi-web keeps of a DICOM file holds no patient data: keyed UID digests, de-identified copies."""

from __future__ import annotations

from busi_web.dicom.privacy import REMOVED, deidentified, uid_digests
from tests.dicom_phantoms import ACCESSION, PATIENT_ID, PATIENT_NAME, instance, phantom, to_bytes


def test_uid_digests_are_keyed_and_stable():
    ds = instance(phantom(), study_uid="1.2.3.4.5")
    first, again = uid_digests(ds, "key one"), uid_digests(ds, b"key one")
    other = uid_digests(ds, "key two")
    assert first == again and first["study"] != other["study"] and len(first["study"]) == 32
    assert set(first) == {"study", "series", "instance"} and "1.2.3.4.5" not in repr(first)
    same_study = instance(phantom(seed=3), study_uid="1.2.3.4.5")
    assert uid_digests(same_study, "key one")["study"] == first["study"]  # rows of one study belong together
    assert uid_digests(same_study, "key one")["instance"] != first["instance"]


def test_deidentified_copy_keeps_the_image_and_drops_the_patient():
    ds = instance(phantom(), spacing=(0.1, 0.1))
    ds.StudyDescription, ds.PatientComments, ds.PatientAge = "Lump left breast, Mrs Doe", "anxious", "056Y"
    ds.add_new(0x00091010, "LO", "vendor secret")  # a private tag
    originals = {k: str(ds.get(k)) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
    pixels = ds.PixelData
    data = to_bytes(deidentified(ds))
    for secret in (PATIENT_NAME.encode(), PATIENT_ID.encode(), ACCESSION.encode(), b"REFERRER", b"Test Hospital",
                   b"Mrs Doe", b"anxious", b"vendor secret", b"19700101",
                   *(uid.encode() for uid in originals.values())):
        assert secret not in data, secret
    assert all(keyword not in ds for keyword in REMOVED)
    assert ds.PixelData == pixels and ds.PixelSpacing == [0.1, 0.1] and ds.Modality == "US"
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert ds.PatientName and ds.PatientID  # replaced by made-up values, not left empty
