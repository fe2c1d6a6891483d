"""``busi-web datasets inspect``: what is in a dataset, and what is wrong with it.

:func:`inspect_dataset` decodes every image once and reports class counts,
image sizes, masks (missing, several per image, another size than the
image, empty in a lesion class), unreadable files and groups of
near-duplicate images, flagging groups whose members are filed under more
than one class. :func:`format_inspection` turns the report into text.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from PIL import Image

from busi_web.data.datasets import DatasetError, ImageDataset
from busi_web.data.splits import DEFAULT_THRESHOLD, group_indices, perceptual_hash

_LIST_LIMIT = 20  # how many keys the text report lists per finding


def _header_size(path: str) -> tuple[int, int] | None:
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError):
        return None


def inspect_dataset(dataset: ImageDataset, threshold: int = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """A JSON-ready report on ``dataset`` (see the module docstring); never raises for a bad file."""
    started = time.perf_counter()
    classes = dataset.classes
    unreadable: list[dict[str, str]] = []
    sizes: Counter[tuple[int, int]] = Counter()
    hashes: list[int | None] = []
    with_masks = 0
    multi_mask: list[str] = []
    mismatched: list[dict[str, Any]] = []
    empty_by_class: Counter[str] = Counter()
    no_mask_by_class: Counter[str] = Counter()
    check_dupes = getattr(dataset, "has_duplicates", True)
    for i, sample in enumerate(dataset.samples):
        cls = classes[sample.label]
        try:
            image = dataset.load_image(i)
        except DatasetError as exc:
            unreadable.append({"key": sample.key, "path": sample.path or "", "error": str(exc)})
            hashes.append(None)
            continue
        h, w = image.shape[:2]
        sizes[(w, h)] += 1
        hashes.append(perceptual_hash(image) if check_dupes else None)
        if len(sample.mask_paths) > 1:
            multi_mask.append(sample.key)
        for mp in sample.mask_paths:
            msize = _header_size(mp)
            if msize is not None and msize != (w, h):
                mismatched.append({"key": sample.key, "mask": mp, "image_size": [w, h], "mask_size": list(msize)})
        try:
            mask = dataset.load_mask(i)
        except DatasetError as exc:
            unreadable.append({"key": sample.key, "path": ", ".join(sample.mask_paths), "error": str(exc)})
            continue
        if mask is None:
            no_mask_by_class[cls] += 1
            continue
        with_masks += 1
        if not mask.any():
            empty_by_class[cls] += 1
    groups = []
    if check_dupes:
        for g in group_indices(len(dataset), hashes, threshold):
            if len(g) < 2:
                continue
            members = [{"key": dataset.samples[i].key, "class": classes[dataset.samples[i].label]} for i in g]
            group_classes = sorted({m["class"] for m in members}, key=classes.index)
            groups.append({"members": members, "classes": group_classes, "cross_class": len(group_classes) > 1})
    widths = [w for w, _ in sizes] or [0]
    heights = [h for _, h in sizes] or [0]
    return {
        "dataset": dataset.name or type(dataset).__name__,
        "root": str(dataset.root) if dataset.root else None,
        "classes": list(classes),
        "total": len(dataset),
        "class_counts": dataset.class_counts(),
        "image_sizes": {
            "counts": {f"{w}x{h}": n for (w, h), n in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))},
            "min_width": min(widths), "max_width": max(widths),
            "min_height": min(heights), "max_height": max(heights),
        },
        "masks": {
            "images_with_masks": with_masks,
            "without_mask_by_class": {c: no_mask_by_class[c] for c in classes if no_mask_by_class[c]},
            "empty_by_class": {c: empty_by_class[c] for c in classes if empty_by_class[c]},
            "multi_mask_images": multi_mask,
            "size_mismatch": mismatched,
            "orphan_masks": list(getattr(dataset, "orphan_masks", [])),
        },
        "unreadable": unreadable,
        # Entries of an index file the dataset could not use (e.g. a mammogram row without coordinates).
        "skipped": list(getattr(dataset, "skipped", [])),
        "duplicates": {
            "checked": check_dupes,
            "threshold": threshold,
            "groups": groups,
            "images_in_groups": sum(len(g["members"]) for g in groups),
            "cross_class_groups": sum(g["cross_class"] for g in groups),
        },
        "seconds": round(time.perf_counter() - started, 2),
    }


def _listing(items: list[str], indent: str = "    ") -> list[str]:
    lines = [f"{indent}{item}" for item in items[:_LIST_LIMIT]]
    if len(items) > _LIST_LIMIT:
        lines.append(f"{indent}... and {len(items) - _LIST_LIMIT} more (see --json)")
    return lines


def format_inspection(report: dict[str, Any]) -> str:
    """Human-readable text of an :func:`inspect_dataset` report."""
    out = [f"dataset {report['dataset']}" + (f" at {report['root']}" if report["root"] else ""),
           f"{report['total']} images in {len(report['classes'])} classes:"]
    width = max((len(c) for c in report["classes"]), default=0)
    for cls, n in report["class_counts"].items():
        out.append(f"  {cls:<{width}}  {n:>6}")
    sizes = report["image_sizes"]
    common = ", ".join(f"{s} ({n})" for s, n in list(sizes["counts"].items())[:5])
    more = f", ... {len(sizes['counts']) - 5} more" if len(sizes["counts"]) > 5 else ""
    out.append(f"image sizes: {common}{more}")
    out.append(f"  width {sizes['min_width']}-{sizes['max_width']}, height {sizes['min_height']}-{sizes['max_height']}")
    m = report["masks"]
    out.append(f"masks: {m['images_with_masks']} of {report['total']} images have a mask")
    for label, table in (("without a mask", m["without_mask_by_class"]), ("with an empty mask", m["empty_by_class"])):
        if table:
            out.append(f"  {label}: " + ", ".join(f"{c} {n}" for c, n in table.items()))
    if m["multi_mask_images"]:
        out.append(f"  {len(m['multi_mask_images'])} image(s) with several masks (merged):")
        out += _listing(m["multi_mask_images"])
    if m["size_mismatch"]:
        out.append(f"  {len(m['size_mismatch'])} mask(s) of another size than their image (resized when loaded):")
        out += _listing([f"{x['key']}: image {x['image_size'][0]}x{x['image_size'][1]}, mask "
                         f"{x['mask_size'][0]}x{x['mask_size'][1]}" for x in m["size_mismatch"]])
    if m["orphan_masks"]:
        out.append(f"  {len(m['orphan_masks'])} mask file(s) with no image of the same name (ignored):")
        out += _listing(m["orphan_masks"])
    if report["unreadable"]:
        out.append(f"UNREADABLE: {len(report['unreadable'])} file(s); replace or remove them:")
        out += _listing([x["error"] for x in report["unreadable"]])
    else:
        out.append("unreadable files: none")
    if report.get("skipped"):
        out.append(f"skipped: {len(report['skipped'])} entr(y/ies) the dataset cannot use:")
        out += _listing(report["skipped"])
    d = report["duplicates"]
    if not d["checked"]:
        out.append("near-duplicates: not checked (the dataset declares it has none, or groups samples itself)")
    elif not d["groups"]:
        out.append(f"near-duplicates: none (perceptual hash, Hamming distance <= {d['threshold']})")
    else:
        out.append(f"near-duplicates: {len(d['groups'])} group(s) holding {d['images_in_groups']} images "
                   f"(perceptual hash, Hamming distance <= {d['threshold']}); splits keep each group in one part")
        if d["cross_class_groups"]:
            out.append(f"  {d['cross_class_groups']} group(s) CROSS CLASSES (the same scan under two labels):")
        # Every cross-class group is listed (each is a labelling error to fix); the others up to the limit.
        for g in d["groups"]:
            if g["cross_class"]:
                out.append(f"  - {', '.join(m['key'] for m in g['members'])}  CROSS-CLASS")
        same = [", ".join(m["key"] for m in g["members"]) for g in d["groups"] if not g["cross_class"]]
        out += _listing(same, indent="  - ")
    out.append(f"inspected in {report['seconds']:.1f} s")
    return "\n".join(out)
