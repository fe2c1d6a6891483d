"""Prediction with heatmaps from a checkpoint, safe to call from many request threads.

``Predictor.from_checkpoint(path)`` rebuilds the model and the exact
preprocessing it was trained with. ``predict(image)`` returns the class
probabilities and, in the same forward pass, the explainer's heatmap mapped
back onto the uploaded image's own size.

Threading: explainers capture activations and gradients with hooks on the
model's modules. A hook registered by one request would also fire for a
forward pass of another request on the same (shared) model, so every use of
the model runs under the Predictor's lock. Inference has no other shared
mutable state: explainer objects are built per call, and the model is in
eval mode (BatchNorm statistics and dropout are fixed).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from busi_web.data.preprocess import crop_pixels, eval_transform, paste_map, to_channels
from busi_web.data.scan import Box, prepare_scan
from busi_web.explain.base import classify, complete_explanation, default_target_layer, feature_map_grid
from busi_web.explain.lesion import find_lesion
from busi_web.explain.render import to_png
from busi_web.model.calibration import apply_temperature
from busi_web.model.checkpoint import CheckpointMeta, load_checkpoint
from busi_web.model.device import resolve_device
from busi_web.model.ood import OodReference, first_batch, record_features
from busi_web.model.operating_point import verdict
from busi_web.model.prediction import Prediction, map_problem
from busi_web.plugins import PluginFailure, PluginRegistry, owner_module
from busi_web.specs import Explanation
from busi_web.store.run_files import PARAMS_JSON


@dataclass
class Prepared:
    """One image as the model takes it (:meth:`Predictor.prepare`): the input tensor, and the region of the image
    the scan steps kept (``None``: the whole image), which puts its maps back in place."""

    tensor: torch.Tensor
    box: Box | None = None


@contextmanager
def record_outputs(layer: nn.Module, batch: int) -> Iterator[list[torch.Tensor]]:
    """Keep ``layer``'s first output for ``batch`` images (detached, on the CPU) while the block runs: later
    forward passes (an explainer's extra ones, Score-CAM's thousands) are not kept. The caller owns the model."""
    calls: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if not calls and isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[0] == batch:
            calls.append(output.detach().cpu())

    with layer.register_forward_hook(hook):
        yield calls


class Predictor:
    """A loaded model plus its preprocessing. Thread-safe (see the module docstring)."""

    def __init__(self, model: nn.Module, meta: CheckpointMeta, registry: PluginRegistry,
                 device: str | torch.device = "cpu", path: str | Path | None = None):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.checkpoint_meta = meta
        self.config = meta.preprocess_config()
        self.transform = eval_transform(self.config)
        self.registry = registry
        self.path = str(path) if path is not None else None
        declared = registry.backbones.get(meta.backbone)  # the spec's layer, for models that carry none
        self.target_layer = meta.target_layer or default_target_layer(model, declared.target_layer if declared else "")
        self._lock = threading.Lock()
        self._layers = {name for name, _ in self.model.named_modules() if name}
        temperature = meta.extra.get("temperature")
        self.temperature = float(temperature) if isinstance(temperature, (int, float)) and temperature > 0 else None
        ood = OodReference.from_meta(meta.extra.get("ood"))
        self.ood = ood if ood is not None and ood.layer in self._layers else None
        # A segmenting model's lesion map is read from its lesion layer in the same forward pass.
        lesion_layer = getattr(model, "lesion_layer", None) if callable(getattr(model, "segment", None)) else None
        self.lesion_layer = lesion_layer if lesion_layer in self._layers else None
        self.lesion_threshold = float(getattr(model, "lesion_threshold", 0.5))
        point = meta.extra.get("operating_point")
        self.operating_point = dict(point) if isinstance(point, dict) and "threshold" in point else None

    @classmethod
    def from_checkpoint(cls, path: str | Path, registry: PluginRegistry,
                        device: str | torch.device = "cpu") -> Predictor:
        """Load ``path`` (raises :class:`busi_web.model.checkpoint.CheckpointError` when unusable)."""
        model, meta = load_checkpoint(path, registry, map_location="cpu")
        return cls(model, meta, registry, device, path)

    @property
    def classes(self) -> list[str]:
        return list(self.checkpoint_meta.classes)

    @property
    def dataset_params(self) -> dict[str, Any]:
        """The dataset parameters the model was trained with (a copy): see :meth:`_trained_dataset_params`."""
        return dict(self._trained_dataset_params)

    @cached_property
    def _trained_dataset_params(self) -> dict[str, Any]:
        """From the checkpoint (the trainer saves them there), else, for older checkpoints, from ``params.json``
        of the run folder the checkpoint sits in; else ``{}``. Read once per loaded model, not per request."""
        saved = self.checkpoint_meta.extra.get("dataset_params")
        if saved is not None:
            return dict(saved)
        if not self.path:
            return {}
        try:
            params = json.loads((Path(self.path).parent / PARAMS_JSON).read_text(encoding="utf-8"))
            return dict(params["params"]["dataset"] or {})
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    @property
    def meta(self) -> dict[str, Any]:
        """What the UI shows about the model."""
        m = self.checkpoint_meta
        return {"classes": list(m.classes), "backbone": m.backbone, "backbone_version": m.backbone_version,
                "backbone_params": dict(m.backbone_params), "run_id": m.run_id, "modality": m.modality,
                "dataset": m.dataset, "input_size": m.input_size, "resize": m.resize, "in_channels": m.in_channels,
                "target_layer": self.target_layer, "segments": self.segments, "path": self.path,
                "device": str(self.device)}

    # -- prediction --------------------------------------------------------
    def predict(self, image: np.ndarray, explainer: str | None = "gradcam", target: int | None = None,
                explainer_params: Mapping[str, Any] | None = None, target_layer: str | None = None) -> Prediction:
        """Classify one ``uint8`` image, ``(H, W)`` or ``(H, W, 3)``; explain ``target`` (default: the top class)."""
        return self.predict_batch([image], explainer, None if target is None else [target],
                                  explainer_params, target_layer)[0]

    def prepare(self, images: Sequence[np.ndarray], regions: Sequence[Box | None] | None = None) -> list[Prepared]:
        """The model's inputs for ``images``, preprocessed exactly as in training (no model, no lock): the scan
        steps the model was trained with (``regions``: each image's ultrasound region when its file names it),
        then the resize, crop and normalisation.

        Callers that feed one model from many threads (the server's micro-batcher) run this in their own
        threads and pass the result to :meth:`predict_batch` as ``prepared``.
        """
        steps = self.config.scan
        out = []
        for i, img in enumerate(images):
            try:
                if steps.active:
                    region = regions[i] if regions is not None else None
                    sub, _, box = prepare_scan(to_channels(img, self.config.channels), steps, region)
                    out.append(Prepared(self.transform(sub), box if steps.crop else None))
                else:
                    out.append(Prepared(self.transform(img)))
            except ValueError as exc:
                raise ValueError(f"image {i}: {exc}" if len(images) > 1 else str(exc)) from None
        return out

    def predict_batch(self, images: Sequence[np.ndarray], explainer: str | None = "gradcam",
                      targets: Sequence[int | None] | None = None, explainer_params: Mapping[str, Any] | None = None,
                      target_layer: str | None = None, prepared: Sequence[Prepared] | None = None,
                      regions: Sequence[Box | None] | None = None) -> list[Prediction]:
        """Classify and explain several images (any sizes) in one forward pass.

        ``prepared``: the images' inputs from :meth:`prepare`, when the caller made them already; ``regions``:
        each image's ultrasound region when its file names it (DICOM), for a model that crops to the scan.
        """
        start = time.perf_counter()
        images = list(images)
        if not images:
            raise ValueError("no images given; pass at least one uint8 image array")
        inputs = list(prepared) if prepared is not None else self.prepare(images, regions)
        if len(inputs) != len(images):
            raise ValueError(f"got {len(inputs)} prepared inputs for {len(images)} images")
        batch = torch.stack([p.tensor for p in inputs]).to(self.device)
        target_t = self._targets(targets, len(images))
        layer = None if explainer is None else self._layer(target_layer)
        watched = self.model.get_submodule(self.ood.layer) if self.ood is not None else nn.Identity()
        outlined = self.model.get_submodule(self.lesion_layer) if self.lesion_layer else nn.Identity()
        with self._lock, record_features(watched) as calls, record_outputs(outlined, len(images)) as lesion_calls:
            if explainer is None:
                result = classify(self.model, batch)
            else:
                result = self._explain(explainer, explainer_params or {}, batch, target_t, layer)
        lesion_maps = torch.sigmoid(lesion_calls[0][:, 0].float()) if lesion_calls else None
        probs = result.probs.detach().float().cpu()
        if self.temperature is not None:
            probs = torch.from_numpy(apply_temperature(probs.numpy(), self.temperature))
        features = first_batch(calls, len(images)) if self.ood is not None else None
        verdicts = self.ood.verdicts(features) if self.ood is not None and features is not None else None
        explained = result.targets.detach().cpu() if result.targets is not None else None
        maps = result.maps.detach().float().cpu() if result.maps is not None else None
        seconds = (time.perf_counter() - start) / len(images)
        classes = self.checkpoint_meta.classes
        out = []
        for i, img in enumerate(images):
            p = probs[i]
            index = int(torch.argmax(p))
            tgt = int(explained[i]) if explained is not None and explainer is not None else None
            heatmap = lesion_map = note = None
            if maps is not None:
                note = map_problem(maps[i], explainer, classes[int(explained[i])] if explained is not None else None)
            if maps is not None and note is None:
                heatmap = np.clip(paste_map(maps[i], img.shape[:2], self.config, inputs[i].box), 0.0, 1.0
                                  ).astype(np.float32)
            if lesion_maps is not None:
                lesion_map = np.clip(paste_map(lesion_maps[i], img.shape[:2], self.config, inputs[i].box), 0.0, 1.0)
            probabilities = {c: float(p[k]) for k, c in enumerate(classes)}
            out.append(Prediction(
                label=classes[index], index=index, probabilities=probabilities,
                operating=verdict(probabilities, self.operating_point), map_note=note,
                target=tgt, target_label=classes[tgt] if tgt is not None else None, explainer=explainer,
                heatmap=heatmap, image=img, seconds=seconds,
                region=crop_pixels(img.shape[:2], self.config, inputs[i].box),
                ood=None if verdicts is None else verdicts[i], lesion_map=lesion_map,
                lesion=None if lesion_map is None else find_lesion(lesion_map, self.lesion_threshold),
                lesion_threshold=self.lesion_threshold))
        return out

    def _explain(self, name: str, params: Mapping[str, Any], batch: torch.Tensor, targets: torch.Tensor | None,
                 layer: str | None) -> Explanation:
        """Run explainer ``name``; a failure of the plugin's code is a :class:`PluginFailure` naming the plugin.

        A ``ValueError`` stays what it is: the explainer saying that the user's choice does not suit it (e.g. CAM
        on a layer that is not followed by pooling and the classifier), with a message that says so.
        """
        spec = self.registry.explainer(name)
        values = spec.validate(params)  # InvalidParameters (a ValueError) names the bad one
        try:
            # Built per call: explainer objects may keep state while they run.
            result = spec.factory(**values).explain(self.model, batch, targets, layer)
            return complete_explanation(result, self.model, batch, targets)
        except ValueError:
            raise
        except Exception as exc:  # noqa: BLE001 - a third party's code may raise anything
            owner = self.registry.owner_of("explainers", name)
            raise PluginFailure(owner, f"explainer {name!r}", exc, owner_module(self.registry, owner or "")) from exc

    @property
    def segments(self) -> bool:
        """Whether this model outlines the lesion (its predictions carry ``lesion_map`` and ``lesion``)."""
        return self.lesion_layer is not None

    def feature_maps(self, image: np.ndarray, layer: str | None = None, channels: int = 16) -> bytes:
        """A PNG grid of the ``channels`` most active feature maps of ``layer`` (default: the target layer)."""
        if not 1 <= int(channels) <= 256:
            raise ValueError(f"channels must be between 1 and 256, got {channels}")
        x = self.prepare([image])[0].tensor[None].to(self.device)
        name = self._layer(layer)
        with self._lock:
            grid = feature_map_grid(self.model, x, name, channels=int(channels))
        return to_png(grid)

    def _targets(self, targets: Sequence[int | None] | None, n: int) -> torch.Tensor | None:
        if targets is None or all(t is None for t in targets):
            return None
        targets = list(targets)
        if len(targets) != n:
            raise ValueError(f"got {len(targets)} targets for {n} images; give one target class per image")
        k = len(self.checkpoint_meta.classes)
        for t in targets:
            if t is None:
                raise ValueError("give a target class for every image or for none (none: the predicted class)")
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= int(t) < k:
                raise ValueError(f"target class must be an index from 0 to {k - 1} "
                                 f"({', '.join(self.checkpoint_meta.classes)}), got {t!r}")
        return torch.tensor([int(t) for t in targets], dtype=torch.long, device=self.device)  # type: ignore[arg-type]

    def _layer(self, layer: str | None) -> str:
        name = layer or self.target_layer
        if name not in self._layers:
            tops = sorted({n.split(".")[0] for n in self._layers})
            raise ValueError(f"layer {name!r} is not a module of the {self.checkpoint_meta.backbone!r} model; "
                             f"use a dotted module path such as {', '.join(tops[:12])}")
        return name
