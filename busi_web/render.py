"""Turning maps into pictures: colormaps, heatmap overlays, feature-map grids and PNG encoding.

Everything here works on numpy arrays on the CPU and returns either a
``uint8`` image array or PNG bytes; nothing depends on torch.

* :func:`colorize` maps values in [0, 1] to RGB. ``"jet"`` (the default) is
  computed here (the classic piecewise-linear blue-cyan-yellow-red ramp, the
  same shape as MATLAB's and OpenCV's JET); ``"gray"`` too; any other name is
  looked up among matplotlib's colormaps (``"viridis"``, ``"inferno"``, ...).
* :func:`overlay_array` / :func:`overlay` blend a colorized heatmap over the
  original image: ``(1 - alpha) * image + alpha * colour``.
* :func:`tile_grid` lays out feature maps as one grayscale grid image.
* :func:`to_png` encodes a ``uint8`` array as PNG bytes.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

__all__ = ["COLORMAPS", "colorize", "overlay_array", "overlay", "tile_grid", "to_png"]

COLORMAPS = ("jet", "gray")  # built in; matplotlib's names work too when matplotlib is installed


def _as_map(heatmap: np.ndarray, what: str = "heatmap") -> np.ndarray:
    arr = np.asarray(heatmap)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{what} must be a 2-D array (H, W), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{what} must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    # NaN (e.g. from a third-party explainer) shows as "no evidence", never as a crash in the colormap.
    return np.clip(np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


def colorize(heatmap: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """``uint8 (H, W, 3)`` colours for a map with values in [0, 1] (``uint8`` maps are read as /255).

    Values outside [0, 1] are clipped. Raises ``ValueError`` for an unknown colormap name.
    """
    x = _as_map(heatmap)
    name = str(colormap).strip().lower()
    if name == "jet":
        # Piecewise-linear JET: blue at 0, cyan at 3/8, yellow at 5/8, red at 1 (dark ends at 0 and 1).
        rgb = np.stack([np.clip(1.5 - np.abs(4.0 * x - c), 0.0, 1.0) for c in (3.0, 2.0, 1.0)], axis=-1)
    elif name in ("gray", "grey"):
        rgb = np.repeat(x[..., None], 3, axis=-1)
    else:
        rgb = _matplotlib_colormap(name, colormap)(x)[..., :3]
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def _matplotlib_colormap(name: str, given: str):
    try:
        import matplotlib

        return matplotlib.colormaps[name]
    except ImportError:
        raise ValueError(f"unknown colormap {given!r}; built-in colormaps: {', '.join(COLORMAPS)} "
                         "(install matplotlib for more)") from None
    except KeyError:
        import matplotlib

        raise ValueError(f"unknown colormap {given!r}; use {', '.join(COLORMAPS)} or a matplotlib colormap "
                         f"such as {', '.join(sorted(n for n in matplotlib.colormaps if not n.endswith('_r'))[:8])}"
                         ) from None


def _as_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (values 0-255), got dtype {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim == 3 and img.shape[2] in (3, 4):
        return img[:, :, :3]
    raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {img.shape}")


def overlay_array(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Blend the colorized ``heatmap`` over ``image``: ``uint8 (H, W, 3)`` = ``(1 - alpha) * image + alpha * colour``.

    ``image`` is ``uint8`` gray ``(H, W)`` or RGB(A) ``(H, W, 3|4)``. A heatmap
    of another size is resized to the image's (bilinear). ``alpha`` is in [0, 1]:
    0 shows the image only, 1 the heatmap only.
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    rgb = _as_rgb(image)
    hm = _as_map(heatmap)
    if hm.shape != rgb.shape[:2]:
        hm = np.asarray(Image.fromarray(hm).resize((rgb.shape[1], rgb.shape[0]), Image.BILINEAR))
    colour = colorize(hm, colormap).astype(np.float32)
    out = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colour
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> bytes:
    """:func:`overlay_array` encoded as PNG bytes."""
    return to_png(overlay_array(image, heatmap, alpha=alpha, colormap=colormap))


def tile_grid(maps: np.ndarray, min_tile: int = 32, columns: int | None = None, gap: int = 1) -> np.ndarray:
    """Lay out ``maps (N, h, w)`` as one ``uint8`` grayscale image.

    Each map is min-max scaled on its own (a constant map is black) and
    enlarged by an integer factor (nearest neighbour, so single activations
    stay visible as blocks) to at least ``min_tile`` pixels on its shorter
    side. Tiles fill a near-square grid (``columns`` = ceil(sqrt(N)) unless
    given), separated by ``gap`` white pixels.
    """
    arr = np.asarray(maps, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"maps must be a non-empty array (N, h, w), got shape {np.asarray(maps).shape}")
    n, h, w = arr.shape
    arr = np.nan_to_num(arr, nan=0.0)
    lo = arr.reshape(n, -1).min(axis=1)[:, None, None]
    span = arr.reshape(n, -1).max(axis=1)[:, None, None] - lo
    scaled = np.where(span > 0, (arr - lo) / np.where(span > 0, span, 1.0), 0.0)
    tiles = np.rint(scaled * 255).astype(np.uint8)
    factor = max(1, math.ceil(int(min_tile) / min(h, w)))
    if factor > 1:
        tiles = tiles.repeat(factor, axis=1).repeat(factor, axis=2)
    th, tw = tiles.shape[1:]
    cols = int(columns) if columns else math.ceil(math.sqrt(n))
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    gap = max(0, int(gap))
    grid = np.full((rows * th + (rows - 1) * gap, cols * tw + (cols - 1) * gap), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = r * (th + gap), c * (tw + gap)
        grid[y:y + th, x:x + tw] = tiles[i]
    return grid


def to_png(image: np.ndarray) -> bytes:
    """PNG bytes of a ``uint8`` image: gray ``(H, W)``, RGB ``(H, W, 3)`` or RGBA ``(H, W, 4)``."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"to_png needs a uint8 image, got dtype {arr.dtype}; scale to 0-255 and convert first")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))) or arr.size == 0:
        raise ValueError(f"to_png needs an image (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    buf = io.BytesIO()
    # compress_level 1: these PNGs are made per request; speed matters more than a few kilobytes.
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
