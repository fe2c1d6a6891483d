"""BUS-BRA as downloaded, and several datasets as one: sites, patients, official folds, per-site splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from busi_web_plugins.busbra import BusbraDataset

from busi_web.data.datasets import DatasetError
from busi_web.data.sites import CombinedDataset, Source, dataset_label, dataset_names, open_sources, sources_of
from busi_web.data.splits import Split, split_dataset
from tests.helpers import write_busi_folder
from tests.synthetic_data import synthetic_mias, write_busbra_folder


@pytest.fixture
def busbra_root(tmp_path: Path) -> Path:
    return write_busbra_folder(tmp_path / "BUSBRA", cases=24)


def _case(ds, i: int) -> str:
    return ds.samples[i].group


def test_busbra_reads_labels_patients_and_metadata(busbra_root: Path):
    ds = BusbraDataset(busbra_root)
    assert ds.classes == ["benign", "malignant"]
    assert len(ds) == 24 + 8  # every third case has two views
    by_key = {s.key: s for s in ds.samples}
    two = by_key["Images/bus_0003-l.png"], by_key["Images/bus_0003-r.png"]
    assert two[0].group == two[1].group == "case 3"
    assert two[0].label == 0 and by_key["Images/bus_0004-s.png"].label == 1  # odd cases benign, even malignant
    extra = two[0].extra
    assert extra["device"] == "GE Logiq 7" and extra["probe"] == "10-14MHz"  # the frequency is not the device
    assert extra["birads"] == "3" and extra["histology"] == "fibroadenoma" and extra["side"] == "left"
    assert ds.site_of(0) == ("busbra", "GE Logiq 5")  # case 1
    mask = ds.load_mask(0)
    assert mask is not None and mask.dtype == bool and mask.any()
    assert ds.load_image(0).shape == (40, 40, 3)


def test_the_projects_split_keeps_each_patient_on_one_side(busbra_root: Path):
    ds = BusbraDataset(busbra_root)
    split = split_dataset(ds, 0.2, 0.2, seed=3)
    side = {}
    for part in ("train", "val", "test"):
        for i in split.part(part):
            assert side.setdefault(_case(ds, i), part) == part, f"{_case(ds, i)} on two sides"
    assert all(split.part(p) for p in ("train", "val", "test"))


@pytest.mark.parametrize("cv,k", [("5-fold", 5), ("10-fold", 10)])
def test_an_official_fold_is_the_split(busbra_root: Path, cv: str, k: int):
    fold = 2
    ds = BusbraDataset(busbra_root, partition=f"{cv}:{fold}")
    split = split_dataset(ds, 0.15, 0.15, seed=0)
    cases = {p: {int(_case(ds, i).split()[1]) for i in split.part(p)} for p in ("train", "val", "test")}
    assert cases["test"] == {c for c in range(1, 25) if 1 + c % k == fold}
    assert cases["val"] == {c for c in range(1, 25) if 1 + c % k != fold and c % 4 == 0}
    assert cases["train"] == {c for c in range(1, 25) if 1 + c % k != fold and c % 4 != 0}
    # Another seed gives the same official parts.
    assert split_dataset(ds, 0.15, 0.15, seed=9).test == split.test


@pytest.mark.parametrize("partition,message", [
    ("3-fold:1", "not one of BUS-BRA's"), ("5-fold:6", "folds 1 to 5"), ("5-fold", "not one of BUS-BRA's")])
def test_a_wrong_partition_is_refused_with_the_choices(busbra_root: Path, partition: str, message: str):
    with pytest.raises(DatasetError, match=message):
        BusbraDataset(busbra_root, partition=partition)


def test_layout_errors_name_the_fix(tmp_path: Path, busbra_root: Path):
    with pytest.raises(DatasetError, match="did you mean"):
        BusbraDataset(busbra_root.parent)
    broken = write_busbra_folder(tmp_path / "broken" / "BUSBRA", cases=4)
    (broken / "bus_data.csv").write_text("ID,Pathology\nbus_0001-s,benign\n")
    with pytest.raises(DatasetError, match="no column.*Case"):
        BusbraDataset(broken)
    partial = write_busbra_folder(tmp_path / "partial", cases=6)
    (partial / "Images" / "bus_0002-s.png").unlink()
    ds = BusbraDataset(partial)
    assert len(ds) == 7 and any("bus_0002-s" in line for line in ds.skipped)
    (partial / "5-fold-cv.csv").write_text("ID,Pathology,kFold,valid_1\nbus_0001-s,benign,1,NaN\n")
    with pytest.raises(DatasetError, match="no row for"):
        split_dataset(BusbraDataset(partial, partition="5-fold:1"), 0.2, 0.2)


def test_two_sites_as_one_dataset(tmp_path: Path, busbra_root: Path, registry):
    busi = write_busi_folder(tmp_path / "busi", ["benign", "malignant", "normal"], per_class=6)
    sources, ds = open_sources(registry, [Source("busi", str(busi)), Source("busbra", str(busbra_root))])
    assert isinstance(ds, CombinedDataset)
    assert ds.classes == ["benign", "malignant", "normal"] and ds.channels == 3
    assert {ds.site_of(i)[0] for i in range(len(ds))} == {"busi", "busbra"}
    first_bra = next(i for i in range(len(ds)) if ds.site_of(i)[0] == "busbra")
    assert ds.samples[first_bra].key.startswith("busbra:Images/") and ds.samples[first_bra].group.startswith("busbra:")
    assert ds.site_of(0) == ("busi", "GE LOGIQ E9")
    assert ds.class_counts()["normal"] == 6  # only BUSI has normal images
    np.testing.assert_array_equal(ds.load_image(first_bra), BusbraDataset(busbra_root).load_image(0))

    split = split_dataset(ds, 0.2, 0.2, seed=5)
    doc = split.to_dict()
    assert doc["sites"][ds.samples[first_bra].key] == "busbra"
    counts = split.site_counts(ds)
    assert counts["busbra"]["test"]["normal"] == 0 and counts["busi"]["test"]["normal"] >= 1
    assert sum(counts["busbra"]["devices"].values()) == len(BusbraDataset(busbra_root))
    # Each site is split as it would be alone: BUSI's parts do not move when BUS-BRA joins.
    _, alone = open_sources(registry, [Source("busi", str(busi))])
    own = split_dataset(alone, 0.2, 0.2, seed=5)
    assert sorted(k.split(":", 1)[1] for k in doc["test"] if k.startswith("busi:")) == sorted(own.to_dict()["test"])
    # The split survives a round trip through split.json.
    again = Split.from_json(split.to_json(), ds)
    assert again.test == split.test and again.sites == split.sites


def test_an_official_fold_of_one_site_beside_the_projects_split_of_another(tmp_path: Path, busbra_root: Path,
                                                                            registry):
    busi = write_busi_folder(tmp_path / "busi", ["benign", "malignant", "normal"], per_class=6)
    _, ds = open_sources(registry, [Source("busi", str(busi)),
                                    Source("busbra", str(busbra_root), {"partition": "5-fold:1"})])
    split = split_dataset(ds, 0.2, 0.2, seed=0)
    test_cases = {ds.samples[i].group for i in split.test if ds.site_of(i)[0] == "busbra"}
    assert test_cases == {f"busbra:case {c}" for c in range(1, 25) if 1 + c % 5 == 1}
    assert any(ds.site_of(i)[0] == "busi" for i in split.test)


def test_sites_of_a_stored_run_and_the_label():
    assert dataset_label(["busi", "busbra"]) == "busi+busbra" and dataset_names("busi+busbra") == ["busi", "busbra"]
    run = {"dataset": "busi+busbra", "data_dir": None, "params": {"datasets": [
        {"dataset": "busi", "data_dir": "/a", "params": {}}, {"dataset": "busbra", "data_dir": "/b", "params": {}}]}}
    assert [s.dataset for s in sources_of(run)] == ["busi", "busbra"]
    single = {"dataset": "busi", "data_dir": "/a", "params": {"dataset": {"classes": ""}}}
    assert sources_of(single) == [Source("busi", "/a")] and sources_of(single)[0].params == {"classes": ""}
    assert json.loads(json.dumps(sources_of(run)[1].to_dict()))["data_dir"] == "/b"


def test_a_combined_run_refuses_two_modalities(tmp_path: Path, registry):
    busi = write_busi_folder(tmp_path / "busi", ["benign", "malignant", "normal"], per_class=3)
    mias = synthetic_mias(tmp_path / "mias", pairs=4)
    with pytest.raises(DatasetError, match="one modality"):
        open_sources(registry, [Source("busi", str(busi)), Source("mias", str(mias))])
