"""The per-site class loss: each site teaches only the classes it has (the loss, the batches, a real run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from busi_web.specs import InvalidParameters
from busi_web.store import run_files as art
from busi_web.training.loop import Engine
from busi_web.training.params import prepare_run_params
from busi_web.training.site_loss import SiteClassLoss, site_class_table
from tests.helpers import TINY, train_in_trainer, two_site_run
from tests.synthetic_data import write_busbra_folder

# Site 0 has all three classes (benign, malignant, normal); site 1 has no normal images.
TABLE = torch.tensor([[True, True, True], [True, True, False]])


def test_with_every_class_allowed_it_is_plain_cross_entropy():
    torch.manual_seed(0)
    logits, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    site = torch.zeros(8, dtype=torch.long)
    for smoothing in (0.0, 0.1):
        ours = SiteClassLoss(TABLE, label_smoothing=smoothing)(logits, y, site)
        torch.testing.assert_close(ours, torch.nn.functional.cross_entropy(logits, y, label_smoothing=smoothing))
    weight = torch.tensor([1.0, 3.0, 0.5])
    ours = SiteClassLoss(TABLE, weight=weight)(logits, y, site)
    torch.testing.assert_close(ours, torch.nn.functional.cross_entropy(logits, y, weight=weight))


def test_a_site_without_a_class_gives_its_logit_no_gradient():
    logits = torch.tensor([[0.5, -1.0, 3.0], [0.5, -1.0, 3.0]], requires_grad=True)
    y = torch.tensor([0, 0])
    loss = SiteClassLoss(TABLE, label_smoothing=0.1)(logits, y, torch.tensor([1, 0]))
    loss.backward()
    grad = logits.grad
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert grad[0, 2] == 0  # the site without normal images says nothing about "normal"
    assert grad[1, 2] > 0  # the site with them pushes "normal" down for a benign image
    # Over its two classes the first image's loss is a softmax over those two alone.
    expected = 0.9 * -torch.log_softmax(torch.tensor([0.5, -1.0]), 0)[0] + 0.1 * -torch.log_softmax(
        torch.tensor([0.5, -1.0]), 0).mean()
    single = SiteClassLoss(TABLE, label_smoothing=0.1)(logits[:1].detach(), y[:1], torch.tensor([1]))
    torch.testing.assert_close(single, expected)


def test_a_label_outside_its_sites_classes_and_a_bad_table_are_refused():
    with pytest.raises(ValueError, match="not among its site's classes"):
        SiteClassLoss(TABLE)(torch.zeros(1, 3), torch.tensor([2]), torch.tensor([1]))
    with pytest.raises(ValueError, match="at least one class per site"):
        SiteClassLoss(torch.tensor([[True, False], [False, False]]))


def test_the_site_table_lists_each_sites_classes():
    names, rows, table = site_class_table(["busi", "busbra", "busi", "busbra"], [2, 0, 1, 1], 3)
    assert names == ["busi", "busbra"] and rows == [0, 1, 0, 1]
    assert table.tolist() == [[False, True, True], [True, True, False]]


def test_the_engine_hands_each_images_site_to_the_loss_with_and_without_mixup():
    torch.manual_seed(0)
    x = torch.randn(16, 4)
    y = torch.tensor([0, 1] * 8)
    site = torch.tensor([1] * 8 + [0] * 8)
    for mixup in (0.0, 0.4):
        model = torch.nn.Linear(4, 3)
        normal_bias = model.bias[2].item()
        engine = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1), SiteClassLoss(TABLE[[1, 1]]),
                        torch.device("cpu"), mixup=mixup)
        result = engine.train_epoch([(x, y, site)] * 3)
        assert result.images == 48 and result.steps == 3
        # Neither site (both rows lack normal) moved the normal logit.
        assert model.bias[2].item() == normal_bias and model.weight.grad[2].abs().sum() == 0


def test_a_two_site_run_trains_each_site_on_its_own_classes(registry, store, tmp_path: Path):
    busbra = write_busbra_folder(tmp_path / "BUSBRA", cases=30, size=40)
    run = two_site_run(store, registry, busbra, site_classes=True, label_smoothing=0.1)
    run = train_in_trainer(store, run["id"])
    log = (Path(run["run_dir"]) / art.LOG_TXT).read_text()
    assert "site phantom has benign, malignant, normal" in log
    assert "site busbra has benign, malignant" in log and "busbra has benign, malignant, normal" not in log
    assert "each image's loss compares only the classes its site has" in log
    metrics = json.loads((Path(run["run_dir"]) / art.METRICS_JSON).read_text())
    assert set(metrics["sites"]) == {"phantom", "busbra"}


def test_the_per_site_class_loss_needs_several_datasets(registry, tmp_path: Path):
    busbra = write_busbra_folder(tmp_path / "BUSBRA", cases=10, size=40)
    with pytest.raises(InvalidParameters, match="site_classes"):
        prepare_run_params(registry, "tiny_cnn", "busbra", data_dir=str(busbra), train={**TINY, "site_classes": True})
