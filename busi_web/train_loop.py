"""The inner loop: one training epoch, evaluation, optimisers, seeding and the resumable state file.

The per-batch path is kept as close as possible to a bare PyTorch loop
(forward, loss, backward, step): running loss and accuracy are summed on
the device, and the host only synchronises with the device (``.item()``) at
the log points, at most every ``log_interval`` seconds. ``benchmarks/train.py``
measures what this bookkeeping costs against the bare loop.
"""

from __future__ import annotations

import copy
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .mixup import mix_batch

STATE_FORMAT = "busi-web-train-state"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA GPU when there is one, else the CPU."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this machine has no CUDA GPU; use device=auto or cpu")
    return dev


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: its shuffling and augmentation depend on (seed, epoch) only, so a resumed
    run draws exactly what an uninterrupted one would have drawn."""
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


@dataclass
class EpochResult:
    loss: float
    acc: float
    images: int
    steps: int
    seconds: float
    stopped: bool


class WeightAverage:
    """An exponential moving average of a model's weights, kept in a frozen copy of the model.

    After every optimiser step each floating-point parameter and buffer moves
    towards the training model's by ``1 - d``. The decay ``d`` warms up as
    ``min(decay, (1 + n) / (10 + n))`` over the first ``n`` updates, so the
    randomly initialised start is forgotten quickly. Integer buffers (batch
    counters) are copied.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight-average decay must be between 0 and 1, got {decay}")
        self.decay, self.updates = float(decay), 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        # Optimisers and load_state_dict update tensors in place, so the pairs are made once, not every step.
        theirs = model.state_dict()
        pairs = [(mine, theirs[key]) for key, mine in self.model.state_dict().items()]
        self._floats = [(a, b) for a, b in pairs if a.is_floating_point()]
        self._others = [(a, b) for a, b in pairs if not a.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        """One step towards the current weights of the model the average was made from."""
        self.updates += 1
        weight = 1.0 - min(self.decay, (1 + self.updates) / (10 + self.updates))
        for mine, theirs in self._floats:
            mine.lerp_(theirs, weight)
        for mine, theirs in self._others:
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, Any]:
        return {"model": {k: v.detach().to("cpu") for k, v in self.model.state_dict().items()},
                "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


class LesionGuide:
    """Lesion guidance: an auxiliary loss that asks the feature maps of ``layers`` to say where the lesion is.

    For each layer a 1x1 convolution turns its features into one logit per
    cell; the target is the share of each cell that the lesion mask covers
    (the augmented mask, average-pooled to that feature map's size). The loss
    is binary cross-entropy over the cells of the images that have a mask (a
    normal image's empty mask says "no lesion anywhere"), averaged over the
    layers, times ``weight``, and added to the classification loss. The first
    layer is the explained one; earlier, finer layers (deep supervision) get
    the lesion's outline at a higher resolution. The convolutions are only a
    training aid: they are not part of the saved model, but the features they
    shape are, so the classifier and its class activation maps lean on the
    lesion rather than on the rest of the image.
    """

    def __init__(self, model: nn.Module, layers: nn.Module | Sequence[nn.Module], sample: torch.Tensor,
                 weight: float):
        if weight <= 0:
            raise ValueError(f"the lesion loss weight must be positive, got {weight}")
        self.layers = [layers] if isinstance(layers, nn.Module) else list(layers)
        if not self.layers:
            raise ValueError("lesion guidance needs at least one layer")
        self.weight = float(weight)
        self._features: list[torch.Tensor | None] = [None] * len(self.layers)
        with self.capture(), torch.no_grad():  # one dry forward tells each layer's channel count
            was_training = model.training
            model.eval()
            model(sample)
            model.train(was_training)
            feats = self._take()
        heads = []
        for layer, f in zip(self.layers, feats, strict=True):
            if f.dim() != 4:
                raise ValueError(f"lesion guidance needs layers with (N, C, H, W) output; "
                                 f"{type(layer).__name__} gives shape {tuple(f.shape)}")
            heads.append(nn.Conv2d(f.shape[1], 1, kernel_size=1))
        self.heads = nn.ModuleList(heads)

    def to(self, device: torch.device) -> LesionGuide:
        self.heads.to(device)
        return self

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.heads.parameters()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu") for k, v in self.heads.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) == {"weight", "bias"}:  # saved by the one-layer guide of earlier versions
            state = {f"0.{k}": v for k, v in state.items()}
        self.heads.load_state_dict(state)

    @contextmanager
    def capture(self) -> Iterator[None]:
        """While inside, every forward of the model keeps the layers' outputs for :meth:`loss`."""
        def keeper(i: int) -> Callable[..., None]:
            def keep(_module: nn.Module, _inputs: Any, output: Any) -> None:
                self._features[i] = output
            return keep
        handles = [layer.register_forward_hook(keeper(i)) for i, layer in enumerate(self.layers)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._features = [None] * len(self.layers)

    def _take(self) -> list[torch.Tensor]:
        feats, self._features = self._features, [None] * len(self.layers)
        if any(f is None for f in feats):
            raise RuntimeError("a guided layer produced no output in the last forward pass")
        return feats  # type: ignore[return-value]

    def loss(self, masks: torch.Tensor, has_mask: torch.Tensor) -> torch.Tensor:
        """The weighted auxiliary loss of the last forward pass, for ``masks`` ``(N, H, W)`` in [0, 1]."""
        has = has_mask.float()
        total = masks.new_zeros((), dtype=torch.float32)
        for head, feats in zip(self.heads, self._take(), strict=True):
            logits = head(feats.float())
            target = nn.functional.adaptive_avg_pool2d(masks[:, None].float(), logits.shape[-2:])
            per_image = nn.functional.binary_cross_entropy_with_logits(logits, target,
                                                                       reduction="none").mean((1, 2, 3))
            total = total + (per_image * has).sum() / has.sum().clamp(min=1.0)
        return self.weight * total / len(self.heads)


class Engine:
    """Trains and evaluates one model on one device (AMP and channels_last on CUDA only).

    With ``ema_decay > 0`` a :class:`WeightAverage` follows the weights, and
    :attr:`eval_model` (what :meth:`predict` runs and what gets saved) is the
    average; otherwise it is the trained model itself. With ``guide`` (a
    :class:`LesionGuide`, moved to the device here; its head's parameters must
    be in ``optimizer``) batches of ``(x, y, mask, has_mask)`` add its loss.
    With ``mixup > 0`` every training batch (masks too) is blended first
    (:func:`busi_web.mixup.mix_batch`).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                 device: torch.device, amp: bool = True, channels_last: bool = True, ema_decay: float = 0.0,
                 guide: LesionGuide | None = None, mixup: float = 0.0):
        if mixup < 0:
            raise ValueError(f"the mixup strength must be 0 (off) or positive, got {mixup}")
        cuda = device.type == "cuda"
        self.mixup = float(mixup)
        self.device = device
        self.channels_last = channels_last and cuda
        self.model = model.to(device, memory_format=torch.channels_last) if self.channels_last else model.to(device)
        self.ema = WeightAverage(self.model, ema_decay) if ema_decay > 0 else None
        self.guide = guide.to(device) if guide is not None else None
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
        guide = self.guide
        with guide.capture() if guide is not None else nullcontext():
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
        for batch in batches:
            x, y = self._to_device(batch[0], batch[1])
            masks = None
            if guide is not None:
                if len(batch) < 4:
                    raise ValueError("lesion guidance needs batches of (image, label, mask, has_mask)")
                masks = (batch[2].to(self.device, non_blocking=True), batch[3].to(self.device, non_blocking=True))
            mix = mix_batch(self.mixup, x, masks) if self.mixup > 0 and x.shape[0] > 1 else None
            if mix is not None:
                x, masks = mix.images, mix.masks
            with self._autocast():
                logits = model(x)
                loss = crit(logits, y)
                if mix is not None:
                    loss = mix.share * loss + (1.0 - mix.share) * crit(logits, y[mix.partner])
                if masks is not None:
                    loss = loss + guide.loss(*masks)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
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


def rng_state() -> dict[str, Any]:
    """The global RNG states, in types that ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write the resumable training state atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"format": STATE_FORMAT, **state}, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state(path: str | Path) -> dict[str, Any] | None:
    """The state saved by :func:`save_state`, or ``None`` when the file is missing or unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file: start the run again rather than fail it
        return None
    return state if isinstance(state, dict) and state.get("format") == STATE_FORMAT else None
