"""The inner loop: one training epoch, evaluation, the optimiser and the learning-rate schedule.

The per-batch path is kept as close as possible to a bare PyTorch loop
(forward, loss, backward, step): running loss and accuracy are summed on
the device, and the host only synchronises with the device (``.item()``) at
the log points, at most every ``log_interval`` seconds. ``benchmarks/train.py``
measures what this bookkeeping costs against the bare loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from busi_web.training.adversary import SiteAdversary
from busi_web.training.aids import LesionGuide, WeightAverage, segmentation_loss
from busi_web.training.mixup import mix_batch


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def build_optimizer(model: nn.Module, p: dict[str, Any], extra: Iterable[nn.Parameter] = ()) -> torch.optim.Optimizer:
    """The optimiser of ``p`` over the model's trainable parameters, then ``extra`` ones (training aids)."""
    params = [q for q in model.parameters() if q.requires_grad] + list(extra)
    if p["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=p["lr"], momentum=p["momentum"], weight_decay=p["weight_decay"],
                               nesterov=p["momentum"] > 0)
    cls = torch.optim.AdamW if p["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=p["lr"], weight_decay=p["weight_decay"])


def build_scheduler(optimizer: torch.optim.Optimizer, p: dict[str, Any]) -> Any:
    if p["scheduler"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=p["epochs"])
    if p["scheduler"] == "plateau":
        mode = "min" if p["monitor"] == "val_loss" else "max"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.5, patience=3)
    return None


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: Any | None = None) -> None:
    """One update: clear the gradients, back-propagate ``loss`` (scaled by the AMP ``scaler`` when there is one)
    and step ``opt``."""
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()


@dataclass
class EpochResult:
    loss: float
    acc: float
    images: int
    steps: int
    seconds: float
    stopped: bool


class Engine:
    """Trains and evaluates one model on one device (AMP and channels_last on CUDA only).

    With ``ema_decay > 0`` a :class:`WeightAverage` follows the weights, and
    :attr:`eval_model` (what :meth:`predict` runs and what gets saved) is the
    average; otherwise it is the trained model itself. With ``guide`` (a
    :class:`LesionGuide`, moved to the device here; its head's parameters must
    be in ``optimizer``) batches of ``(x, y, mask, has_mask)`` add its loss.
    With ``mixup > 0`` every training batch (masks too) is blended first
    (:func:`busi_web.training.mixup.mix_batch`). With ``segment_loss > 0`` the
    model is a segmenting backbone (``BackboneSpec.segments``): batches carry
    masks too, the model's ``segment(x, masks)`` gives its lesion map, and
    :func:`~busi_web.training.aids.segmentation_loss` times ``segment_loss``
    joins the loss. A ``criterion`` that ``takes_sites``
    (:class:`~busi_web.training.site_loss.SiteClassLoss`) gets each image's
    site index, and an ``adversary`` (a :class:`SiteAdversary`, moved to the
    device here; its head's parameters must be in ``optimizer``) adds its
    loss; the training batches then carry each image's site index as their
    last item.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                 device: torch.device, amp: bool = True, channels_last: bool = True, ema_decay: float = 0.0,
                 guide: LesionGuide | None = None, mixup: float = 0.0, segment_loss: float = 0.0,
                 adversary: SiteAdversary | None = None):
        if mixup < 0:
            raise ValueError(f"the mixup strength must be 0 (off) or positive, got {mixup}")
        if segment_loss < 0 or (segment_loss > 0 and not callable(getattr(model, "segment", None))):
            raise ValueError("segment_loss needs a segmenting model (one with a segment method) and a weight >= 0")
        self.segment_loss = float(segment_loss)
        cuda = device.type == "cuda"
        self.mixup = float(mixup)
        self.device = device
        self.channels_last = channels_last and cuda
        self.model = model.to(device, memory_format=torch.channels_last) if self.channels_last else model.to(device)
        self.ema = WeightAverage(self.model, ema_decay) if ema_decay > 0 else None
        self.guide = guide.to(device) if guide is not None else None
        self.adversary = adversary.to(device) if adversary is not None else None
        self.optimizer, self.criterion = optimizer, criterion.to(device)
        self.amp_dtype: torch.dtype | None = None
        if amp and cuda:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # float16 needs loss scaling against underflowing gradients; bfloat16 has float32's range.
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated, tested and saved: the running average when there is one."""
        return self.ema.model if self.ema is not None else self.model

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def train_epoch(self, batches: Iterable[Sequence[torch.Tensor]], *, epoch: int = 1, step: int = 0,
                    on_log: Callable[[dict[str, Any]], None] | None = None, log_interval: float = 0.5,
                    should_stop: Callable[[], bool] | None = None) -> EpochResult:
        """One pass over ``batches``. ``on_log`` gets the mean loss/accuracy since its last call.

        ``should_stop()`` is asked after every batch; when true the epoch ends
        early with ``stopped=True``. ``step`` is the global step before the epoch.
        """
        guide, adversary = self.guide, self.adversary
        with guide.capture() if guide is not None else nullcontext(), \
                adversary.capture() if adversary is not None else nullcontext():
            return self._train_epoch(batches, epoch, step, on_log, log_interval, should_stop)

    def _train_epoch(self, batches: Iterable[Sequence[torch.Tensor]], epoch: int, step: int,
                     on_log: Callable[[dict[str, Any]], None] | None, log_interval: float,
                     should_stop: Callable[[], bool] | None) -> EpochResult:
        model, opt, crit, scaler, guide = self.model, self.optimizer, self.criterion, self.scaler, self.guide
        model.train()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float32)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = steps = 0
        stopped = False
        start = last = time.perf_counter()
        mark = (0.0, 0, 0)  # loss sum, correct, seen at the last log point
        takes_sites, adversary = getattr(crit, "takes_sites", False), self.adversary
        for batch in batches:
            x, y = self._to_device(batch[0], batch[1])
            site = None
            if takes_sites or adversary is not None:
                site, batch = batch[-1].to(self.device, non_blocking=True), batch[:-1]
            masks = None
            if guide is not None or self.segment_loss > 0:
                if len(batch) < 4:
                    raise ValueError("lesion masks: the loss needs batches of (image, label, mask, has_mask)")
                masks = (batch[2].to(self.device, non_blocking=True), batch[3].to(self.device, non_blocking=True))
            mix = mix_batch(self.mixup, x, masks) if self.mixup > 0 and x.shape[0] > 1 else None
            if mix is not None:
                x, masks = mix.images, mix.masks
            with self._autocast():
                if self.segment_loss > 0:
                    logits, lesion = model.segment(x, masks)
                else:
                    logits = model(x)
                loss = crit(logits, y, site) if takes_sites else crit(logits, y)
                if mix is not None:
                    partner = y[mix.partner]
                    other = crit(logits, partner, site[mix.partner]) if takes_sites else crit(logits, partner)
                    loss = mix.share * loss + (1.0 - mix.share) * other
                if adversary is not None:  # a blend counts as its larger share's image (its own, with mixup)
                    loss = loss + adversary.loss(y, site)
                if masks is not None:
                    loss = loss + (self.segment_loss * segmentation_loss(lesion, *masks) if self.segment_loss > 0
                                   else guide.loss(*masks))
            optimizer_step(loss, opt, scaler)
            if self.ema is not None:
                self.ema.update()
            n = y.shape[0]
            loss_sum.add_(loss.detach().float(), alpha=n)
            correct.add_((logits.detach().argmax(1) == y).sum())
            seen += n
            steps += 1
            if should_stop is not None and should_stop():
                stopped = True
                break
            if on_log is not None:
                now = time.perf_counter()
                if now - last >= log_interval:
                    last = now
                    total, right = loss_sum.item(), int(correct.item())  # the only host syncs of the loop
                    if not np.isfinite(total):
                        raise TrainingDiverged(f"the training loss became {total} in epoch {epoch}")
                    on_log({"epoch": epoch, "step": step + steps, "batch_loss": (total - mark[0]) / (seen - mark[2]),
                            "batch_acc": (right - mark[1]) / (seen - mark[2])})
                    mark = (total, right, seen)
        total, right = loss_sum.item(), int(correct.item())
        if not np.isfinite(total):
            raise TrainingDiverged(f"the training loss became {total} in epoch {epoch}")
        return EpochResult(loss=total / max(seen, 1), acc=right / max(seen, 1), images=seen, steps=steps,
                           seconds=time.perf_counter() - start, stopped=stopped)

    @torch.inference_mode()
    def predict(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[np.ndarray, np.ndarray, float]:
        """``(labels, probabilities (N, K), mean unweighted cross-entropy)`` over ``batches``."""
        model = self.eval_model
        model.eval()
        logits_all, labels_all = [], []
        for x, y in batches:
            x, y = self._to_device(x, y)
            with self._autocast():
                logits_all.append(model(x).float())
            labels_all.append(y)
        if not logits_all:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32), float("nan")
        logits, labels = torch.cat(logits_all), torch.cat(labels_all)
        loss = float(nn.functional.cross_entropy(logits, labels).item())
        probs = torch.softmax(logits, dim=1)
        return labels.cpu().numpy(), probs.cpu().numpy(), loss
