"""Rendering: JET colours, overlays with alpha, feature-map grids, PNG encoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from busi_web.explain.render import colorize, overlay, overlay_array, render_heatmap, tile_grid, to_png


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def test_jet_goes_blue_cyan_yellow_red():
    x = np.array([[0.0, 0.125, 0.375, 0.5, 0.625, 0.875, 1.0]])
    rgb = colorize(x)
    assert rgb.shape == (1, 7, 3) and rgb.dtype == np.uint8
    assert rgb[0].tolist() == [[0, 0, 128], [0, 0, 255], [0, 255, 255], [128, 255, 128], [255, 255, 0],
                               [255, 0, 0], [128, 0, 0]]
    assert np.array_equal(colorize(np.array([[-3.0, 7.0]])), colorize(np.array([[0.0, 1.0]])))  # clipped
    assert colorize(np.array([[0.5]]), "gray").tolist() == [[[128, 128, 128]]]
    assert colorize(np.array([[1.0]]), "viridis").shape == (1, 1, 3)  # a matplotlib colormap
    with pytest.raises(ValueError, match="unknown colormap 'nope'"):
        colorize(np.zeros((2, 2)), "nope")


def test_overlay_blends_with_alpha_and_resizes_the_map():
    image = np.full((6, 8), 100, np.uint8)
    hot = np.ones((6, 8), np.float32)
    assert np.array_equal(overlay_array(image, hot, alpha=0.0), np.full((6, 8, 3), 100, np.uint8))
    assert np.array_equal(overlay_array(image, hot, alpha=1.0), colorize(hot))
    half = overlay_array(image, hot, alpha=0.5)  # (100 + (128, 0, 0)) / 2
    assert half[0, 0].tolist() == [114, 50, 50]
    small = overlay_array(np.zeros((12, 16, 3), np.uint8), np.ones((3, 4)), alpha=1.0)
    assert small.shape == (12, 16, 3) and (small == [128, 0, 0]).all()
    png = overlay(image, hot, alpha=0.4)
    assert png.startswith(b"\x89PNG") and _decode(png).shape == (6, 8, 3)
    with pytest.raises(ValueError, match="alpha must be between 0 and 1"):
        overlay(image, hot, alpha=1.5)
    with pytest.raises(ValueError, match="image must be uint8"):
        overlay(image.astype(np.float32), hot)
    with pytest.raises(ValueError, match="heatmap must be a 2-D array"):
        overlay(image, np.ones((1, 6, 8)))


def test_tile_grid_layout_scaling_and_constant_maps():
    maps = np.stack([np.arange(4.0).reshape(2, 2), np.zeros((2, 2)), np.full((2, 2), 5.0)])
    grid = tile_grid(maps, min_tile=4)
    # 3 maps -> 2 columns, 2 rows; tiles 2x2 enlarged 2x to 4x4; 1 px white gaps.
    assert grid.shape == (9, 9) and grid.dtype == np.uint8
    assert grid[0:2, 0:2].tolist() == [[0, 0], [0, 0]] and grid[0, 2] == 85 and grid[2, 0] == 170 and grid[3, 3] == 255
    assert (grid[:, 4] == 255).all() and (grid[4, :] == 255).all()
    assert (grid[0:4, 5:9] == 0).all() and (grid[5:9, 0:4] == 0).all()  # constant maps are black
    assert (grid[5:9, 5:9] == 255).all()  # the unused cell stays white
    assert tile_grid(np.zeros((1, 40, 40)), min_tile=32).shape == (40, 40)
    with pytest.raises(ValueError, match=r"\(N, h, w\)"):
        tile_grid(np.zeros((0, 4, 4)))


def test_to_png_round_trip():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert np.array_equal(_decode(to_png(gray)), gray)
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(_decode(to_png(rgb)), rgb)
    with pytest.raises(ValueError, match="uint8"):
        to_png(gray.astype(np.float32))
    with pytest.raises(ValueError, match="got shape"):
        to_png(np.zeros((4, 4, 2), np.uint8))


@pytest.mark.parametrize("colormap", ["jet", "gray"])
def test_the_fast_overlay_is_the_blend_formula_within_two_levels(colormap):
    """The palette and Image.blend path against ``(1 - alpha) * image + alpha * colorize(map)``, computed here."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:40, 0:56]
    heatmap = np.exp(-((yy - 15) ** 2 + (xx - 30) ** 2) / 90.0).astype(np.float32)
    for image in (rng.integers(0, 255, (40, 56), dtype=np.uint8), rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)):
        blended, heat = render_heatmap(image, heatmap, 0.35, colormap)
        assert heat.mode == "P"  # one byte per pixel to encode; it decodes to the colours
        assert np.abs(np.asarray(heat.convert("RGB"), int) - colorize(heatmap, colormap)).max() <= 2
        rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
        exact = 0.65 * rgb.astype(np.float64) + 0.35 * colorize(heatmap, colormap).astype(np.float64)
        assert np.abs(np.asarray(blended, float) - exact).max() <= 2
        assert np.array_equal(overlay_array(image, heatmap, 0.35, colormap), np.asarray(blended))
