"""Turning maps into pictures: colormaps, heatmap overlays, feature-map grids and PNG encoding.

Everything here works on numpy arrays on the CPU and returns either a
``uint8`` image array or PNG bytes; nothing depends on torch.

* :func:`colorize` maps values in [0, 1] to RGB. ``"jet"`` (the default) is
  computed here (the classic piecewise-linear blue-cyan-yellow-red ramp, the
  same shape as MATLAB's and OpenCV's JET); ``"gray"`` too; any other name is
  looked up among matplotlib's colormaps (``"viridis"``, ``"inferno"``, ...).
* :func:`render_heatmap` blends a colorized heatmap over the original image,
  ``(1 - alpha) * image + alpha * colour``, and gives the coloured heatmap
  too. It is the one path from a map to a picture, and a fast one: a
  256-entry palette lookup and ``Image.blend`` run in C without holding the
  GIL, so request threads leave the interpreter to the model's thread.
  :func:`overlay_array` / :func:`overlay` are its array and PNG forms.
* :func:`draw_outline` draws a lesion's outline (a closed polygon) over a picture,
  and :func:`annotate` makes the picture a diagnosis shows: the overlay (or
  the image) with the outline.
* :func:`tile_grid` lays out feature maps as one grayscale grid image.
* :func:`to_png` encodes a ``uint8`` array as PNG bytes, and :func:`fast_png`
  an array or a Pillow image for a response (a grey RGB image as one channel).
"""

from __future__ import annotations

import functools
import io
import math

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["COLORMAPS", "colorize", "legend_stops", "render_heatmap", "overlay_array", "overlay", "tile_grid", "to_png",
           "fast_png", "draw_outline", "annotate", "OUTLINE_COLOUR"]

OUTLINE_COLOUR = (0, 255, 102)  # a green no colormap here uses for evidence, drawn over a dark halo

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
    # matplotlib takes about half a second to import: only for a colormap that is not built in.
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except KeyError:
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


@functools.lru_cache(maxsize=16)
def palette(colormap: str, levels: int = 256) -> bytes:
    """The colormap as an RGB palette of ``levels`` entries (entry k is the colour of k / (levels - 1)); raises
    ``ValueError`` for an unknown colormap name."""
    ramp = np.linspace(0.0, 1.0, levels, dtype=np.float32)[None, :]
    return colorize(ramp, colormap)[0].astype(np.uint8).tobytes()


UNSEEN = 255  # the palette index of "not seen by the model" (transparent) when a region is given


Region = tuple[int, int, int, int]  # (left, top, right, bottom) in pixels, right and bottom exclusive


def legend_stops(colormap: str = "jet", n: int = 11) -> list[str]:
    """``n`` colours (``#rrggbb``) of the colormap from 0 to 1, evenly spaced: a colour-scale legend's stops."""
    colours = colorize(np.linspace(0.0, 1.0, max(2, int(n)), dtype=np.float32)[None, :], colormap)[0]
    return ["#" + bytes(int(v) for v in c).hex() for c in colours]


def render_heatmap(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, colormap: str = "jet",
                   region: Region | None = None, blend: bool = True) -> tuple[Image.Image, Image.Image]:
    """``(overlay, coloured heatmap)`` as Pillow images: the overlay is RGB, ``(1 - alpha) * image + alpha * colour``;
    the heatmap stays a palette image (a third of the bytes to encode as PNG).

    ``image`` is ``uint8`` gray ``(H, W)`` or RGB(A) ``(H, W, 3|4)``. The map
    (values in [0, 1], or ``uint8`` read as /255; NaN counts as 0) is quantised
    to 256 levels, resized to the image's size (bilinear) when it differs, and
    coloured by a palette lookup: within 2/255 of colouring every value exactly.
    ``alpha`` is in [0, 1]: 0 shows the image only, 1 the heatmap only.

    ``region``: the part of the image the model saw (its centre crop). Outside
    it the map says nothing, so nothing is painted there: the overlay shows the
    image itself with a dashed frame around the region, and the heatmap's palette
    gives the outside index :data:`UNSEEN`, marked transparent (the map then has
    255 levels instead of 256). Painting the unseen border as "no evidence" (blue) is
    what drew a hard-edged rectangle a few percent in from every border.

    ``blend=False``: only the heatmap is wanted; the first image returned is then the image itself, unblended and
    unframed (no CPU spent on an overlay nobody asked for).
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    rgb = _as_rgb(image)
    base = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    box = _inner_region(region, base.size)
    top = 255 if box is None else UNSEEN - 1  # with a region, one palette entry is kept for "unseen"
    levels = Image.fromarray(np.rint(_as_map(heatmap) * top).astype(np.uint8), "L")
    if base.size != levels.size:
        levels = levels.resize(base.size, Image.BILINEAR)
    heat = levels.convert("P")  # level k becomes palette index k
    heat.putpalette(palette(colormap, top + 1))
    blended = Image.blend(base, heat.convert("RGB"), alpha) if blend else base
    if box is None:
        return blended, heat
    shown = base
    if blend:
        seen = Image.new("L", base.size, 0)
        seen.paste(255, box)
        shown = Image.composite(blended, base, seen)
        _dashed_frame(shown, box)
    unseen = Image.new("P", base.size, UNSEEN)
    unseen.paste(heat.crop(box), box[:2])
    unseen.putpalette(palette(colormap, top + 1) + b"\x00\x00\x00")
    unseen.info["transparency"] = UNSEEN  # a tRNS chunk: browsers draw nothing there
    return shown, unseen


def _inner_region(region: Region | None, size: tuple[int, int]) -> Region | None:
    """``region`` clipped to the image, or ``None`` when it is absent or covers the whole image."""
    if region is None:
        return None
    w, h = size
    left, top, right, bottom = (int(v) for v in region)
    left, top, right, bottom = max(0, left), max(0, top), min(w, right), min(h, bottom)
    if right <= left or bottom <= top:
        raise ValueError(f"region {region} lies outside the {w}x{h} image")
    return None if (left, top, right, bottom) == (0, 0, w, h) else (left, top, right, bottom)


def _dashed_frame(image: Image.Image, box: Region) -> None:
    """Draw a white dashed line just inside ``box`` (its width scales with the image)."""
    left, top, right, bottom = box
    width = max(1, min(image.size) // 250)
    dash = 4 * width
    draw = ImageDraw.Draw(image)
    for x in range(left, right, 2 * dash):
        for y in (top, bottom - width):
            draw.rectangle((x, y, min(x + dash, right) - 1, y + width - 1), fill=(255, 255, 255))
    for y in range(top, bottom, 2 * dash):
        for x in (left, right - width):
            draw.rectangle((x, y, x + width - 1, min(y + dash, bottom) - 1), fill=(255, 255, 255))


def draw_outline(image: Image.Image | np.ndarray, points: list[tuple[int, int]] | list[list[int]]) -> Image.Image:
    """``image`` (a Pillow image, changed in place, or a ``uint8`` array, copied) with the closed polygon
    ``points`` ((x, y) pixels) drawn over it: a line in :data:`OUTLINE_COLOUR` over a dark halo, both scaled to the
    image's size so that the outline reads on light and dark tissue alike."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(_as_rgb(image)), "RGB")
    if picture.mode != "RGB":
        picture = picture.convert("RGB")
    pts = [(int(p[0]), int(p[1])) for p in points]
    if len(pts) < 2:
        return picture
    width = max(1, min(picture.size) // 200)
    draw = ImageDraw.Draw(picture)
    ring = pts + pts[:1]
    draw.line(ring, fill=(0, 0, 0), width=width + 2, joint="curve")
    draw.line(ring, fill=OUTLINE_COLOUR, width=width, joint="curve")
    return picture


def annotate(image: np.ndarray, heatmap: np.ndarray | None = None, alpha: float = 0.5, colormap: str = "jet",
             region: Region | None = None, outline: list[tuple[int, int]] | list[list[int]] | None = None,
             blend: bool = True) -> tuple[Image.Image, Image.Image | None]:
    """``(picture, coloured heatmap)``: the heatmap blended over ``image`` (as :func:`render_heatmap`; the image
    alone, and no heatmap, when ``heatmap`` is ``None``; with ``blend=False`` the image unblended), with the
    lesion's ``outline`` drawn when one is given."""
    if heatmap is None:
        picture, heat = Image.fromarray(np.ascontiguousarray(_as_rgb(image)), "RGB"), None
    else:
        picture, heat = render_heatmap(image, heatmap, alpha, colormap, region, blend)
    return (draw_outline(picture, outline) if outline else picture), heat


def overlay_array(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, colormap: str = "jet",
                  region: Region | None = None) -> np.ndarray:
    """The overlay of :func:`render_heatmap` as a ``uint8 (H, W, 3)`` array."""
    return np.asarray(render_heatmap(image, heatmap, alpha, colormap, region)[0])


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, colormap: str = "jet",
            region: Region | None = None) -> bytes:
    """:func:`overlay_array` encoded as PNG bytes."""
    return to_png(overlay_array(image, heatmap, alpha=alpha, colormap=colormap, region=region))


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
    return _encode(Image.fromarray(np.ascontiguousarray(arr)))


def _encode(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    # zlib level 1: these PNGs are made per request; about 3x faster than the default, files ~10% larger.
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def fast_png(image: np.ndarray | Image.Image) -> bytes:
    """PNG bytes for a response: a Pillow image as it is, an array as :func:`to_png` does, except that an RGB
    array whose channels are equal (a grey scan) is written as one channel."""
    if isinstance(image, Image.Image):
        return _encode(image)
    if image.ndim == 3 and image.shape[2] == 3 and np.array_equal(image[..., 0], image[..., 1]) \
            and np.array_equal(image[..., 1], image[..., 2]):
        image = image[..., 0]
    return to_png(image)
