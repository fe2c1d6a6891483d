"""Rendering: JET colours, overlays with alpha, feature-map grids, PNG encoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from busi_web.explain.render import (
    OUTLINE_COLOUR,
    annotate,
    colorize,
    legend_stops,
    overlay,
    overlay_array,
    render_heatmap,
    tile_grid,
    to_png,
)


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


def test_a_region_leaves_the_unseen_border_unpainted_and_framed():
    """The model saw only its centre crop: outside it the overlay is the image itself (no blue "no evidence"
    band, which drew a hard-edged rectangle ~6% in from every border), with a dashed white frame at the crop."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 200, (40, 50), dtype=np.uint8)
    heat = np.zeros((40, 50), np.float32)
    heat[10:30, 10:40] = 0.8
    region = (5, 3, 45, 37)
    shown, coloured = render_heatmap(image, heat, alpha=0.5, region=region)
    shown = np.asarray(shown)
    plain = np.repeat(image[:, :, None], 3, axis=2)
    assert np.array_equal(shown[:3], plain[:3]) and np.array_equal(shown[:, :5], plain[:, :5])
    assert np.array_equal(shown[37:], plain[37:]) and np.array_equal(shown[:, 45:], plain[:, 45:])
    frame = shown[3, 5:45]  # the top edge of the region: dashes of white
    assert (frame == 255).all(axis=1).sum() >= 15 and not (frame == 255).all()
    inside = overlay_array(image, heat, alpha=0.5)
    # Inside, the blend of the whole-image path (255 levels instead of 256: within 2/255).
    assert np.abs(shown[10:30, 10:40].astype(int) - inside[10:30, 10:40]).max() <= 2
    alpha = np.asarray(coloured.convert("RGBA"))[:, :, 3]
    assert coloured.mode == "P" and coloured.info["transparency"] == 255
    assert (alpha[3:37, 5:45] == 255).all() and alpha.sum() == 255 * 40 * 34
    # A region that is the whole image changes nothing; one outside the image is refused.
    whole = render_heatmap(image, heat, region=(0, 0, 50, 40))
    assert np.array_equal(np.asarray(whole[0]), overlay_array(image, heat)) and whole[1].mode == "P"
    with pytest.raises(ValueError, match="lies outside"):
        render_heatmap(image, heat, region=(60, 0, 70, 10))


def test_legend_stops_run_from_the_low_to_the_high_colour():
    stops = legend_stops("jet", 5)
    assert stops == ["#000080", "#0080ff", "#80ff80", "#ff8000", "#800000"]
    assert legend_stops("gray", 2) == ["#000000", "#ffffff"]


def test_annotate_draws_the_outline_over_the_overlay_or_the_image_alone():
    image = np.full((60, 80), 90, np.uint8)
    heat = np.zeros((60, 80), np.float32)
    heat[20:40, 30:50] = 1.0
    ring = [(30, 20), (50, 20), (50, 40), (30, 40)]
    plain, no_heat = annotate(image, outline=ring)
    assert no_heat is None and plain.mode == "RGB" and plain.size == (80, 60)
    plain = np.asarray(plain)
    assert tuple(plain[20, 40]) == OUTLINE_COLOUR  # on the outline
    assert tuple(plain[30, 40]) == (90, 90, 90)  # inside it, the image as it was
    over, coloured = annotate(image, heat, 0.5, "jet", outline=ring)
    over = np.asarray(over)
    assert coloured is not None and tuple(over[20, 40]) == OUTLINE_COLOUR
    bare = np.asarray(annotate(image, heat, 0.5, "jet")[0])
    assert tuple(bare[20, 40]) != OUTLINE_COLOUR
    assert np.array_equal(over[30, 40], bare[30, 40])  # inside the outline, the overlay is untouched


def test_without_blending_the_heatmap_is_the_same_and_the_image_is_left_as_it_is():
    from busi_web.explain.render import render_heatmap

    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (40, 50), dtype=np.uint8)
    heat_map = rng.random((10, 12)).astype(np.float32)
    for region in (None, (5, 4, 45, 36)):
        blended, heat = render_heatmap(image, heat_map, 0.5, "jet", region)
        plain, same = render_heatmap(image, heat_map, 0.5, "jet", region, blend=False)
        assert np.array_equal(np.asarray(same), np.asarray(heat)) and same.info == heat.info
        assert np.array_equal(np.asarray(plain)[..., 0], image)  # no colour, no frame
        assert not np.array_equal(np.asarray(blended), np.asarray(plain))
