"""Image preprocessing shared by the trainer and the predictor, so both see exactly the same pixels.

Input: a ``uint8`` numpy image, ``(H, W)`` grayscale or ``(H, W, 3)`` RGB
(``(H, W, 1)`` and RGBA ``(H, W, 4)`` are accepted too). Output: a
normalised ``float32`` tensor ``(C, input_size, input_size)``.

Evaluation: resize so the shorter side is ``resize`` (bilinear, antialiased),
centre-crop ``input_size``, scale to [0, 1], normalise. The geometry is
computed here, not inside torchvision, so :func:`crop_box` and
:func:`paste_map` can map a heatmap back onto the uploaded image exactly.

Before that, the scan steps of :mod:`busi_web.data.scan` (``PreprocessConfig.scan``)
may have cut the image to its ultrasound region: the geometry functions then
take that region (``box``) and place the crop inside it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from busi_web.data.scan import Box, ScanSteps

IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)
# One gray channel: the average of ImageNet's three.
GRAY_MEAN: tuple[float, ...] = (sum(IMAGENET_MEAN) / 3,)
GRAY_STD: tuple[float, ...] = (sum(IMAGENET_STD) / 3,)
# ITU-R BT.601 luma, the weights PIL's convert("L") uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class PreprocessConfig:
    """Sizes and normalisation. ``mean``/``std`` default to ImageNet's for the given ``channels``. ``scan``: the
    scan steps that run on the decoded image first (:mod:`busi_web.data.scan`; none by default)."""

    input_size: int = 224
    resize: int = 256
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())
    channels: int = 3
    scan: ScanSteps = field(default_factory=ScanSteps)

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels}")
        if not self.mean:
            object.__setattr__(self, "mean", IMAGENET_MEAN if self.channels == 3 else GRAY_MEAN)
        if not self.std:
            object.__setattr__(self, "std", IMAGENET_STD if self.channels == 3 else GRAY_STD)
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if int(self.input_size) < 8:
            raise ValueError(f"input_size must be at least 8 pixels, got {self.input_size}")
        if int(self.resize) < int(self.input_size):
            raise ValueError(f"resize ({self.resize}) must be at least input_size ({self.input_size}): "
                             "the image is resized, then a square of input_size is cropped from it")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} value(s), one per channel; "
                             f"got mean={self.mean}, std={self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std), "scan": self.scan.to_dict()}


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Check ``image`` and return it as ``uint8`` ``(H, W)`` for 1 channel or ``(H, W, 3)`` for 3.

    Raises ``ValueError`` naming what is wrong with the array.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected an image as a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image (values 0-255), got dtype {image.dtype}; "
                         "convert with np.clip(a, 0, 255).astype(np.uint8)")
    if image.ndim == 3 and image.shape[2] in (1, 3, 4):
        if image.shape[2] == 1:
            image = image[:, :, 0]
        elif image.shape[2] == 4:
            image = image[:, :, :3]  # alpha carries no diagnostic content
    elif image.ndim != 2:
        raise ValueError(f"expected an image of shape (H, W) or (H, W, 3), got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"the image is empty (shape {image.shape})")
    if channels == 3:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image)
    if channels == 1:
        if image.ndim == 2:
            return np.ascontiguousarray(image)
        return np.clip(np.rint(image.astype(np.float32) @ _LUMA), 0, 255).astype(np.uint8)
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def resized_hw(orig_hw: tuple[int, int], resize: int) -> tuple[int, int]:
    """Size after scaling the shorter side to ``resize`` (the longer side rounded, at least ``resize``)."""
    h, w = int(orig_hw[0]), int(orig_hw[1])
    if h <= w:
        return resize, max(resize, int(round(w * resize / h)))
    return max(resize, int(round(h * resize / w))), resize


def _to_float_tensor(image: np.ndarray, channels: int) -> Tensor:
    arr = to_channels(image, channels)
    t = torch.from_numpy(arr)
    t = t[None] if t.dim() == 2 else t.permute(2, 0, 1)
    return t.to(torch.float32).div_(255.0)


def _resize(t: Tensor, cfg: PreprocessConfig) -> Tensor:
    size = resized_hw((t.shape[-2], t.shape[-1]), cfg.resize)
    if tuple(t.shape[-2:]) == size:
        return t
    return TF.resize(t, list(size), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


def _normalise(t: Tensor, cfg: PreprocessConfig) -> Tensor:
    return TF.normalize(t, list(cfg.mean), list(cfg.std))


def _centre_offsets(hw: tuple[int, int], size: int) -> tuple[int, int]:
    return (hw[0] - size) // 2, (hw[1] - size) // 2


class EvalTransform:
    """Deterministic: resize the shorter side, centre crop, normalise. Picklable (DataLoader workers)."""

    def __init__(self, cfg: PreprocessConfig):
        self.cfg = cfg

    def __call__(self, image: np.ndarray) -> Tensor:
        t = _resize(_to_float_tensor(image, self.cfg.channels), self.cfg)
        top, left = _centre_offsets((t.shape[-2], t.shape[-1]), self.cfg.input_size)
        s = self.cfg.input_size
        return _normalise(t[:, top:top + s, left:left + s].contiguous(), self.cfg)


class TrainTransform:
    """Random augmentation for training, on torch's generator (DataLoader worker seeding makes runs reproducible).

    Steps, in order: resize the shorter side to ``resize``; rotate by up to
    ``±rotation`` degrees (corners filled black, like the background of an
    ultrasound sector); crop; flip horizontally with ``hflip``; jitter the
    intensities with ``intensity``; normalise.

    * ``crop_scale == 1``: a square of ``input_size`` at a random position
      (a shift only; the scale matches evaluation).
    * ``crop_scale < 1``: a random-resized crop. Its area is a random
      fraction of the resized image in ``[crop_scale, 1]``, its aspect ratio
      in ``[3/4, 4/3]`` (log-uniform), and it is resized to ``input_size``:
      the network sees lesions at several scales and parts of the image.
    * ``intensity = s > 0``: brightness and contrast factors in ``[1-s, 1+s]``
      and a gamma in ``[1/(1+s), 1+s]`` (log-uniform), since gain and
      dynamic range differ between scanners and operators.
    * ``scanner = s > 0``: what another scanner would change, each effect with
      probability one half: a depth gain ramp (time-gain compensation, up to
      ``±0.4 s`` from top to bottom), a coarser resolution (down by a factor up
      to ``1 + 1.5 s``, then back up), a blur (sigma up to ``1.5 s`` pixels)
      and multiplicative speckle (standard deviation up to ``0.25 s``).
    """

    def __init__(self, cfg: PreprocessConfig, hflip: bool = True, rotation: float = 15.0, crop_scale: float = 1.0,
                 intensity: float = 0.0, scanner: float = 0.0):
        if rotation < 0 or rotation > 180:
            raise ValueError(f"rotation must be between 0 and 180 degrees, got {rotation}")
        if not 0.05 <= crop_scale <= 1.0:
            raise ValueError(f"crop_scale must be between 0.05 and 1 (the smallest crop's share of the image), "
                             f"got {crop_scale}")
        if not 0.0 <= intensity < 1.0:
            raise ValueError(f"intensity must be at least 0 and below 1, got {intensity}")
        if not 0.0 <= scanner <= 1.0:
            raise ValueError(f"scanner must be from 0 to 1, got {scanner}")
        self.cfg, self.hflip, self.rotation = cfg, bool(hflip), float(rotation)
        self.crop_scale, self.intensity, self.scanner = float(crop_scale), float(intensity), float(scanner)

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * torch.rand(()).item()

    def _crop(self, t: Tensor) -> Tensor:
        s = self.cfg.input_size
        h, w = t.shape[-2], t.shape[-1]
        if self.crop_scale >= 1.0:
            top = int(torch.randint(0, h - s + 1, ()).item())
            left = int(torch.randint(0, w - s + 1, ()).item())
            return t[:, top:top + s, left:left + s]
        area = self._uniform(self.crop_scale, 1.0) * h * w
        aspect = math.exp(self._uniform(math.log(3 / 4), math.log(4 / 3)))  # width / height
        ch = min(h, max(1, int(round(math.sqrt(area / aspect)))))
        cw = min(w, max(1, int(round(math.sqrt(area * aspect)))))
        top = int(torch.randint(0, h - ch + 1, ()).item())
        left = int(torch.randint(0, w - cw + 1, ()).item())
        return TF.resize(t[:, top:top + ch, left:left + cw], [s, s], interpolation=TF.InterpolationMode.BILINEAR,
                         antialias=True)

    def _jitter(self, t: Tensor) -> Tensor:
        k = self.intensity
        gamma = math.exp(self._uniform(-math.log1p(k), math.log1p(k)))
        brightness, contrast = self._uniform(1 - k, 1 + k), self._uniform(1 - k, 1 + k)
        t = t.clamp(0.0, 1.0).pow(gamma)
        mean = t.mean()
        return ((t - mean) * contrast + mean * brightness).clamp_(0.0, 1.0)

    def _scanner(self, t: Tensor) -> Tensor:
        """Another scanner's look (see the class docstring); ``t`` is ``(C, H, W)`` in [0, 1]."""
        s = self.scanner
        h, w = t.shape[-2], t.shape[-1]
        if torch.rand(()).item() < 0.5:  # depth gain: a linear ramp from the top of the image to the bottom
            slope = self._uniform(-0.4 * s, 0.4 * s)
            t = t * (1.0 + slope * (torch.linspace(-1.0, 1.0, h)[:, None]))
        if torch.rand(()).item() < 0.5:  # a coarser scanner: fewer pixels, brought back to the size
            f = self._uniform(1.0, 1.0 + 1.5 * s)
            small = [max(4, int(round(h / f))), max(4, int(round(w / f)))]
            t = TF.resize(TF.resize(t, small, antialias=True), [h, w], antialias=False)
        if torch.rand(()).item() < 0.5:
            sigma = self._uniform(0.1, max(0.1, 1.5 * s))
            k = 2 * int(math.ceil(2 * sigma)) + 1
            t = TF.gaussian_blur(t, [k, k], [sigma, sigma])
        if torch.rand(()).item() < 0.5:  # multiplicative speckle, the same on every channel
            t = t * (1.0 + self._uniform(0.0, 0.25 * s) * torch.randn(1, h, w))
        return t.clamp_(0.0, 1.0)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """The augmented image; with ``mask`` (``(H, W)``, bool or 0/1, the image's size) also the mask moved
        by the same rotation, crop and flip, as ``float32 (input_size, input_size)`` in [0, 1]."""
        t = _resize(_to_float_tensor(image, self.cfg.channels), self.cfg)
        n = t.shape[0]
        if mask is not None:
            if mask.shape != image.shape[:2]:
                raise ValueError(f"the mask's size {mask.shape[::-1]} differs from its image's "
                                 f"{image.shape[1::-1]}")
            m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
            t = torch.cat([t, TF.resize(m, list(t.shape[-2:]), interpolation=TF.InterpolationMode.BILINEAR,
                                        antialias=True)])
        if self.rotation > 0:
            angle = (torch.rand(()).item() * 2 - 1) * self.rotation
            t = TF.rotate(t, angle, interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
        t = self._crop(t)
        if self.hflip and torch.rand(()).item() < 0.5:
            t = t.flip(-1)
        t, moved = t[:n], t[n:]
        if self.scanner > 0:
            t = self._scanner(t)
        if self.intensity > 0:
            t = self._jitter(t)
        out = _normalise(t.contiguous(), self.cfg)
        return out if mask is None else (out, moved[0].clamp(0.0, 1.0).contiguous())


def eval_transform(cfg: PreprocessConfig) -> EvalTransform:
    """The evaluation / prediction transform for ``cfg``."""
    return EvalTransform(cfg)


def train_transform(cfg: PreprocessConfig, hflip: bool = True, rotation: float = 15.0, crop_scale: float = 1.0,
                    intensity: float = 0.0, scanner: float = 0.0) -> TrainTransform:
    """The training transform (augmenting) for ``cfg``; see :class:`TrainTransform`."""
    return TrainTransform(cfg, hflip=hflip, rotation=rotation, crop_scale=crop_scale, intensity=intensity,
                          scanner=scanner)


def _within(box: Box | None, orig_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(left, top, height, width)`` of the part of the original the transforms see: ``box`` or all of it."""
    if box is None:
        return 0, 0, int(orig_hw[0]), int(orig_hw[1])
    left, top, right, bottom = box
    return int(left), int(top), int(bottom - top), int(right - left)


def crop_box(orig_hw: tuple[int, int], cfg: PreprocessConfig, box: Box | None = None
             ) -> tuple[float, float, float, float]:
    """The region ``(top, left, bottom, right)`` of the original image that the eval crop shows, in pixels;
    ``box``: the part of the image the scan steps kept (:func:`busi_web.data.scan.prepare_scan`)."""
    x, y, h, w = _within(box, orig_hw)
    rh, rw = resized_hw((h, w), cfg.resize)
    top, left = _centre_offsets((rh, rw), cfg.input_size)
    sy, sx = h / rh, w / rw
    s = cfg.input_size
    return y + top * sy, x + left * sx, y + (top + s) * sy, x + (left + s) * sx


def crop_pixels(orig_hw: tuple[int, int], cfg: PreprocessConfig, box: Box | None = None
                ) -> tuple[int, int, int, int]:
    """The whole pixels of the original image that the eval crop covers, as a box ``(left, top, right, bottom)``
    (right and bottom exclusive; Pillow's order). Pixels outside it were never seen by the model."""
    x, y, h, w = _within(box, orig_hw)
    top, left, bottom, right = crop_box((h, w), cfg)
    # The crop is at least one pixel wide by construction.
    y0, x0 = max(0, math.floor(top + 0.5)), max(0, math.floor(left + 0.5))
    y1, x1 = min(h, max(y0 + 1, math.floor(bottom + 0.5))), min(w, max(x0 + 1, math.floor(right + 0.5)))
    return x + x0, y + y0, x + x1, y + y1


def paste_map(map_hw: np.ndarray | Tensor, orig_hw: tuple[int, int], cfg: PreprocessConfig,
              box: Box | None = None) -> np.ndarray:
    """Put a map of the crop (any size) back onto the original image's geometry: ``float32 (H, W)``.

    The map is resized bilinearly onto the crop region; pixels outside the
    crop (cut off by the centre crop or the scan steps, so never seen by the model) are 0.
    """
    m = torch.as_tensor(np.asarray(map_hw.detach().cpu() if isinstance(map_hw, Tensor) else map_hw),
                        dtype=torch.float32)
    if m.dim() != 2:
        raise ValueError(f"expected a 2-D map (h, w), got shape {tuple(m.shape)}")
    h, w = int(orig_hw[0]), int(orig_hw[1])
    x0, y0, x1, y1 = crop_pixels((h, w), cfg, box)
    resized = torch.nn.functional.interpolate(m[None, None], size=(y1 - y0, x1 - x0), mode="bilinear",
                                              align_corners=False)[0, 0]
    out = np.zeros((h, w), dtype=np.float32)
    out[y0:y1, x0:x1] = resized.numpy()
    return out
