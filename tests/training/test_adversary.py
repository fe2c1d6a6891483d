"""The site adversary: gradient reversal, the images it is shown, what it does to features, and a real run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from busi_web.data.sites import Source
from busi_web.specs import InvalidParameters
from busi_web.store import run_files as art
from busi_web.training.adversary import SiteAdversary, reverse_gradient
from busi_web.training.loop import Engine
from busi_web.training.params import prepare_run_params
from busi_web.training.resume import load_state
from tests.helpers import TINY, make_image_folder, train_in_trainer, two_site_run
from tests.synthetic_data import write_busbra_folder

SHARED = torch.tensor([True, True, False])  # benign and malignant at every site, normal at one


def small_model() -> nn.Sequential:
    """Two input channels, one 1x1 convolution (the adversary's layer, ``0``), pooled, then the classifier."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def test_the_reversed_gradient_is_the_gradient_times_minus_the_strength():
    x = torch.ones(3, requires_grad=True)
    y = reverse_gradient(x, 0.5)
    assert torch.equal(y, x)
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [-0.5, -1.0, -1.5]


def test_the_strength_ramps_from_zero_to_the_weight():
    model = small_model()
    adversary = SiteAdversary(model, model[0], torch.zeros(1, 2, 4, 4), 2, SHARED, weight=0.8)
    adversary.set_progress(0.0)
    assert adversary.strength == 0.0
    adversary.set_progress(0.5)
    assert 0.7 < adversary.strength < 0.8
    adversary.set_progress(1.0)
    assert adversary.strength == pytest.approx(0.8, abs=1e-3)


def test_only_images_of_a_class_every_site_has_are_shown_to_it():
    model = small_model()
    adversary = SiteAdversary(model, model[0], torch.zeros(1, 2, 4, 4), 2, SHARED, weight=1.0)
    adversary.set_progress(1.0)
    with adversary.capture():
        model(torch.randn(4, 2, 4, 4))
        loss = adversary.loss(torch.tensor([2, 2, 2, 2]), torch.tensor([0, 0, 0, 0]))  # normal images only
    assert loss.item() == 0.0
    loss.backward()
    assert model[0].weight.grad.abs().sum() == 0  # they teach the features nothing about the site


def test_a_site_with_no_shared_class_or_one_site_is_refused():
    model = small_model()
    with pytest.raises(ValueError, match="share no class"):
        SiteAdversary(model, model[0], torch.zeros(1, 2, 4, 4), 2, torch.tensor([False, False, False]), 1.0)
    with pytest.raises(ValueError, match="two sites"):
        SiteAdversary(model, model[0], torch.zeros(1, 2, 4, 4), 1, SHARED, 1.0)


def _train(adversary_weight: float) -> float:
    """Train the small model on images whose channel 0 says the class (with noise) and whose channel 1 says the
    site, which says nothing of the class. Returns how strongly the features read channel 1 (the site) at the end:
    the summed size of the convolution's weights on it."""
    gen = torch.Generator().manual_seed(1)
    n = 64
    site = torch.arange(n) % 2
    y = torch.where(torch.rand(n, generator=gen) < 0.5, site, 1 - site)
    x = torch.zeros(n, 2, 4, 4)
    x[:, 0] = (y.float() * 2 - 1)[:, None, None] + 0.5 * torch.randn(n, 1, 1, generator=gen)
    x[:, 1] = (site.float() * 2 - 1)[:, None, None]
    model = small_model()
    adversary = None
    if adversary_weight > 0:
        adversary = SiteAdversary(model, model[0], x[:1], 2, SHARED, adversary_weight)
        adversary.set_progress(1.0)
    extra = list(adversary.parameters()) if adversary else []
    engine = Engine(model, torch.optim.Adam([*model.parameters(), *extra], lr=0.02), nn.CrossEntropyLoss(),
                    torch.device("cpu"), adversary=adversary)
    batches = [(x[k:k + 16], y[k:k + 16], site[k:k + 16]) for k in range(0, n, 16)]
    for epoch in range(100):
        engine.train_epoch(batches, epoch=epoch + 1)
    return float(model[0].weight.detach()[:, 1].abs().sum())


def test_the_adversary_keeps_the_site_out_of_the_features():
    plain, adversarial = _train(0.0), _train(1.0)
    # Left alone, the features pick the site up (by chance, as it is there to see); against the adversary they
    # read it far less.
    assert adversarial < 0.75 * plain, (plain, adversarial)


def test_a_two_site_run_trains_against_the_site_and_keeps_the_head_for_resuming(registry, store, tmp_path: Path):
    busbra = write_busbra_folder(tmp_path / "BUSBRA", cases=30, size=40)
    run = two_site_run(store, registry, busbra, site_adversary=0.5)
    run = train_in_trainer(store, run["id"])
    folder = Path(run["run_dir"])
    log = (folder / art.LOG_TXT).read_text()
    assert "site adversary on" in log and "shown benign, malignant" in log
    assert "site busbra has benign, malignant" in log and "compares only the classes" not in log
    state = load_state(folder / art.LAST_PT)
    assert state["site_adversary"] and all(torch.isfinite(v).all() for v in state["site_adversary"].values())


def test_the_site_adversary_needs_several_datasets(registry, tmp_path: Path):
    busbra = write_busbra_folder(tmp_path / "BUSBRA", cases=10, size=40)
    with pytest.raises(InvalidParameters, match="site_adversary"):
        prepare_run_params(registry, "tiny_cnn", "busbra", data_dir=str(busbra),
                           train={**TINY, "site_adversary": 0.5})
    others = make_image_folder(tmp_path / "others", {"normal": 4, "cyst": 4})
    with pytest.raises(InvalidParameters, match="share no class"):
        prepare_run_params(registry, "tiny_cnn", [Source("imagefolder", str(others)), Source("busbra", str(busbra))],
                           train={**TINY, "site_adversary": 0.5})
