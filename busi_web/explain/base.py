"""Class-activation maps (the Grad-CAM family) computed on the model's device, from ONE forward pass.

:meth:`CamExplainer.explain` runs the model once and returns an
:class:`Explanation`: the logits and softmax probabilities of that forward
pass, the classes explained and the heatmaps. The methods themselves (Grad-CAM,
Grad-CAM++, CAM, LayerCAM, HiResCAM, Score-CAM) live in
:mod:`busi_web.explain.methods`; each one only says how the target layer's
activations ``A (B, C, h, w)`` (and, where needed, the gradients ``dA`` of the
target class score, i.e. the logit, with respect to ``A``) become a raw map
``(B, h, w)``. This module owns everything else:

* **Hooks.** A forward hook on the target layer is registered inside a
  context manager and removed on the way out, also when the forward raises.
  The hook ignores forward passes of other threads, so a model shared by
  request threads is never disturbed.
* **Cheap gradients.** The forward runs under ``torch.no_grad()``. When the
  target layer fires, the hook replaces its output by a detached copy that
  requires grad and switches grad mode on (grad mode is thread-local), so
  autograd records only the part of the network *after* the target layer
  (e.g. CBAM, pooling and the classifier). Gradients come from
  ``torch.autograd.grad(scores, activation)``: no ``backward()``, nothing is
  accumulated in any parameter's ``.grad``, and ``requires_grad`` of the
  parameters is never touched. The grad mode in force before the call is
  restored afterwards.
* **Targets.** One class per image, or ``None`` for each image's predicted class.
* **Normalisation**, the same for every method (:func:`normalise_maps`):
  ReLU, bilinear upsampling to the input's size (``align_corners=False``),
  then min-max scaling per image to [0, 1]. A map without variation (all zero
  after the ReLU, or constant) becomes all zero, never NaN.

If the target layer runs more than once in one forward pass, the last call is
explained. Turning maps into pictures is :mod:`busi_web.explain.render`'s job.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from busi_web.explain.render import tile_grid
from busi_web.specs import Explanation

__all__ = ["CamExplainer", "CamInputs", "resolve_layer", "classify", "normalise_maps", "feature_map_grid", "capture",
           "default_target_layer", "complete_explanation"]


@dataclass
class CamInputs:
    """What a method gets to build its raw map from (all tensors on the input's device).

    ``activations`` is the target layer's output ``(B, C, h, w)`` (detached);
    ``gradients`` is d(target logit)/d(activations), or ``None`` for methods
    that set ``needs_gradients = False``. ``head`` is the last ``nn.Linear``
    that ran after the target layer and ``head_input`` what it got, recorded
    only for methods that set ``needs_head = True``.
    """

    model: nn.Module
    images: Tensor
    layer_name: str
    activations: Tensor
    gradients: Tensor | None
    logits: Tensor
    targets: Tensor
    head: nn.Linear | None = None
    head_input: Tensor | None = None


def default_target_layer(model: nn.Module, declared: str = "") -> str:
    """The layer a model's maps are made from: the model's own ``target_layer`` attribute (a backbone sets it when
    the layer depends on its parameters), else ``declared`` (the :class:`~busi_web.specs.BackboneSpec`'s
    ``target_layer``). Raises ``ValueError`` when neither names one."""
    name = getattr(model, "target_layer", None) or declared
    if not name:
        raise ValueError(f"the {type(model).__name__} model declares no target layer: set target_layer on its "
                         "BackboneSpec (or on the model), or give a layer explicitly")
    return str(name)


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    """The submodule of ``model`` named by a dotted path (``"layer4"``, ``"features.3"``) or given as a module.

    Raises ``ValueError`` naming the closest module paths when the name is unknown.
    """
    if isinstance(layer, nn.Module):
        if any(m is layer for m in model.modules()):
            return layer
        raise ValueError(f"the given target layer ({type(layer).__name__}) is not a submodule of this "
                         f"{type(model).__name__}; pass one of its modules or a dotted path such as 'layer4'")
    if not isinstance(layer, str) or not layer.strip():
        raise ValueError(f"target layer must be a dotted module path such as 'layer4' or a module, got {layer!r}")
    modules = dict(model.named_modules())
    name = layer.strip()
    if name in modules and name:
        return modules[name]
    names = [n for n in modules if n]
    near = difflib.get_close_matches(name, names, n=6, cutoff=0.5)
    tops = [n for n, _ in model.named_children()]
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    raise ValueError(f"layer {name!r} is not a module of {type(model).__name__}{hint} "
                     f"(top-level modules: {', '.join(tops) or 'none'}; use a dotted path such as 'layer4.2')")


def normalise_maps(raw: Tensor, size: tuple[int, int]) -> Tensor:
    """ReLU, bilinear upsampling to ``size`` (``align_corners=False``), min-max per map into [0, 1].

    ``raw`` is ``(B, h, w)``; the result is ``float32 (B, H, W)``. A map with
    no variation (e.g. all zero) becomes all zero instead of NaN.
    """
    if raw.ndim != 3:
        raise ValueError(f"raw maps must be (B, h, w), got shape {tuple(raw.shape)}")
    maps = torch.relu(raw.detach().float())
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    flat = maps.flatten(1)
    lo = flat.amin(dim=1)[:, None, None]
    span = flat.amax(dim=1)[:, None, None] - lo
    # Constant maps would divide 0 by 0: give them span 1, so (x - lo) / 1 = 0 everywhere.
    return (maps - lo) / torch.where(span > 0, span, torch.ones_like(span))


def _check_images(images: Any) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor (B, C, H, W), got {shape}; add a batch dimension "
                         "with images[None] for a single image")
    return images


def _check_logits(out: Any, batch: int) -> Tensor:
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != batch:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the model must return logits (B, K) = ({batch}, K), got {shape}")
    return out


def _targets(targets: Any, logits: Tensor) -> Tensor:
    """One class index per image (checked against K), or the predicted classes for ``None``."""
    batch, k = logits.shape
    if targets is None:
        return logits.argmax(dim=1)
    if isinstance(targets, Tensor):
        values = targets.detach().flatten().tolist() if targets.ndim <= 1 else None
    elif isinstance(targets, (int, np.integer)) and not isinstance(targets, bool):
        values = [int(targets)]
    elif isinstance(targets, Sequence) and not isinstance(targets, str):
        values = list(targets)
    else:
        values = None
    if values is None:
        raise ValueError(f"targets must be a sequence or 1-D tensor of class indices, got {targets!r}")
    if len(values) != batch:
        raise ValueError(f"got {len(values)} targets for {batch} images; give one target class per image "
                         "(or targets=None to explain each image's predicted class)")
    for t in values:
        if isinstance(t, bool) or not float(t).is_integer() or not 0 <= int(t) < k:
            raise ValueError(f"target class must be an index from 0 to {k - 1}, got {t!r}")
    return torch.tensor([int(t) for t in values], dtype=torch.long, device=logits.device)


@dataclass
class _Capture:
    activation: Tensor | None = None
    calls: int = 0
    head: nn.Linear | None = None
    head_input: Tensor | None = None
    handles: list[Any] = field(default_factory=list)


@contextmanager
def capture(model: nn.Module, layer: nn.Module, *, leaf: bool, watch_head: bool = False) -> Iterator[_Capture]:
    """Record ``layer``'s output during forward passes of this thread; hooks are removed on exit, always.

    With ``leaf`` the output is swapped for a detached copy that requires
    grad, and grad mode is switched on for the rest of the forward (run the
    forward under ``torch.no_grad()``; its exit restores the mode). The network
    downstream gets a clone of that leaf, so in-place layers after the target
    layer cannot corrupt the recorded activation. With ``watch_head`` the last
    ``nn.Linear`` that runs after the target layer is recorded with its input.
    """
    owner = threading.get_ident()
    state = _Capture()

    def on_layer(module: nn.Module, inputs: Any, output: Any) -> Any:
        if threading.get_ident() != owner:
            return None  # another thread's forward on a shared model: leave it alone
        if not isinstance(output, Tensor) or output.ndim != 4:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(f"the target layer must output a feature map (B, C, h, w), got {shape}; "
                             "choose a convolutional layer or block, e.g. 'layer4'")
        state.calls += 1
        state.head, state.head_input = None, None  # only heads after the (last) target call count
        if not leaf:
            state.activation = output.detach().clone()
            return None
        act = output.detach().requires_grad_(True)
        state.activation = act
        torch.set_grad_enabled(True)
        return act.clone()

    def on_linear(module: nn.Module, inputs: Any, output: Any) -> None:
        if threading.get_ident() == owner and state.calls and inputs and isinstance(inputs[0], Tensor):
            state.head, state.head_input = module, inputs[0].detach()  # type: ignore[assignment]

    try:
        state.handles.append(layer.register_forward_hook(on_layer))
        if watch_head:
            for m in model.modules():
                if isinstance(m, nn.Linear):
                    state.handles.append(m.register_forward_hook(on_linear))
        yield state
    finally:
        for h in state.handles:
            h.remove()
        state.handles.clear()


def classify(model: nn.Module, images: Tensor) -> Explanation:
    """Logits, probabilities and predicted classes without a map, under ``torch.no_grad()``."""
    images = _check_images(images)
    with torch.no_grad():
        logits = _check_logits(model(images), images.shape[0]).detach()
    return Explanation(logits=logits, probs=torch.softmax(logits.float(), dim=1), targets=logits.argmax(dim=1))


def complete_explanation(result: Any, model: nn.Module, images: Tensor, targets: Any = None) -> Explanation:
    """An explainer's answer as a whole :class:`~busi_web.specs.Explanation` (see ``ExplainerSpec``).

    An :class:`Explanation` is checked and returned; plain maps ``(B, h, w)``
    (a tensor or a numpy array) get the forward pass's probabilities (one
    :func:`classify`) and are normalised like the built-in maps
    (:func:`normalise_maps`). Raises ``TypeError`` for anything else: the
    explainer broke its contract.
    """
    batch = images.shape[0]
    if isinstance(result, Explanation):
        maps = result.maps
        if maps is not None and (not isinstance(maps, Tensor) or maps.ndim != 3 or maps.shape[0] != batch):
            shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
            raise TypeError(f"Explanation.maps must be a tensor (B, H, W) with B = {batch}, got {shape}")
        return result
    if isinstance(result, np.ndarray):
        result = torch.from_numpy(np.ascontiguousarray(result))
    if not isinstance(result, Tensor) or result.ndim != 3 or result.shape[0] != batch:
        shape = tuple(result.shape) if isinstance(result, (Tensor, np.ndarray)) else type(result).__name__
        raise TypeError(f"explain() must return an Explanation or maps (B, h, w) with B = {batch}, got {shape}")
    base = classify(model, images)
    chosen = base.targets if targets is None else _targets(targets, base.logits)
    maps = normalise_maps(result.to(images.device), (images.shape[-2], images.shape[-1]))
    return Explanation(logits=base.logits, probs=base.probs, targets=chosen, maps=maps)


class CamExplainer:
    """Base of the CAM family: hooks, target selection, gradients and normalisation (see the module docstring).

    Subclasses set ``name`` and implement :meth:`raw_maps`; they set
    ``needs_gradients = False`` when they use the activations only, and
    ``needs_head = True`` to get the classifier's final ``nn.Linear``.
    """

    name: str = "base"
    needs_gradients: bool = True
    needs_head: bool = False

    def raw_maps(self, inp: CamInputs) -> Tensor:
        """The method's unnormalised maps ``(B, h, w)`` from the captured activations and gradients."""
        raise NotImplementedError

    def explain(self, model: nn.Module, images: Tensor, targets: Sequence[int] | Tensor | None = None,
                target_layer: str | nn.Module | None = None) -> Explanation:
        """Probabilities and ``(B, H, W)`` maps in [0, 1] for ``targets`` (``None``: predicted classes).

        ``target_layer`` is a dotted module path or a module; ``None`` uses the
        model's ``target_layer`` attribute. The caller puts the model in eval mode.
        """
        images = _check_images(images)
        if target_layer is None:
            target_layer = default_target_layer(model)
        layer = resolve_layer(model, target_layer)
        layer_name = target_layer if isinstance(target_layer, str) else type(target_layer).__name__
        with capture(model, layer, leaf=self.needs_gradients, watch_head=self.needs_head) as cap, torch.no_grad():
            out = model(images)
        logits = _check_logits(out, images.shape[0])
        if cap.activation is None:
            raise ValueError(f"target layer {layer_name!r} did not run in the model's forward pass; "
                             "choose a layer the forward pass uses, e.g. the last convolutional block")
        chosen = _targets(targets, logits)
        grads = None
        if self.needs_gradients:
            if not logits.requires_grad:
                raise ValueError(f"the model's output does not depend on target layer {layer_name!r} "
                                 "(or the model disables gradients itself); choose a layer on the path to the logits")
            score = logits.gather(1, chosen[:, None]).sum()  # images are independent in eval mode
            grads = torch.autograd.grad(score, cap.activation)[0]
        inp = CamInputs(model=model, images=images, layer_name=layer_name, activations=cap.activation.detach(),
                        gradients=grads, logits=logits.detach(), targets=chosen, head=cap.head,
                        head_input=cap.head_input)
        with torch.no_grad():
            raw = self.raw_maps(inp)
            maps = normalise_maps(raw, tuple(images.shape[-2:]))
        logits = logits.detach()
        return Explanation(logits=logits, probs=torch.softmax(logits.float(), dim=1), targets=chosen,
                           maps=maps.to(images.device))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def feature_map_grid(model: nn.Module, image: Tensor, layer: str | nn.Module, channels: int = 16,
                     min_tile: int = 32) -> np.ndarray:
    """A ``uint8`` image of the first ``channels`` feature maps of ``layer`` for one image ``(1, C, H, W)``.

    Each map is min-max scaled on its own and enlarged by an integer factor
    (nearest neighbour) to at least ``min_tile`` pixels, and the tiles are laid
    out in a square-ish grid with 1-pixel gaps (see :func:`busi_web.explain.render.tile_grid`).
    """
    image = _check_images(image)
    if image.shape[0] != 1:
        raise ValueError(f"feature_map_grid takes one image (1, C, H, W), got a batch of {image.shape[0]}")
    if int(channels) < 1:
        raise ValueError(f"channels must be at least 1, got {channels}")
    module = resolve_layer(model, layer)
    with capture(model, module, leaf=False) as cap, torch.no_grad():
        model(image)
    if cap.activation is None:
        raise ValueError(f"layer {layer!r} did not run in the model's forward pass")
    maps = cap.activation[0, : int(channels)].float().cpu().numpy()
    return tile_grid(maps, min_tile=min_tile)
