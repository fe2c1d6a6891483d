"""Results per site: how a model does at each hospital (dataset) it is scored on, with intervals.

A model is judged at a hospital whose images it never saw, so every report
(the run's test report, ``busi-web evaluate``, the model card, the Models
page) gives per site:

* accuracy, and macro-F1 over the classes present at that site (BUS-BRA has
  no normal images: a class without images does not count as an F1 of 0);
* benign-versus-malignant AUC (``p(malignant)`` on the benign and malignant images);
* sensitivity per class, and the share of lesions called normal;
* the expected calibration error;
* the share of images flagged out of distribution, and of the wrong answers flagged;
* where a site has normal images, normal-versus-lesion AUC (``p(normal)``), and normals called a lesion;
* at the operating point (a threshold on ``p(malignant)``): sensitivity and specificity for malignancy.

95 % intervals come from a bootstrap that resamples patients where the data
has patient ids (``Sample.group``), images otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from busi_web.model.calibration import expected_calibration_error

POSITIVE = "malignant"  # the class the operating point and the benign-versus-malignant AUC are about
NEGATIVE = "benign"
LESION_FREE = "normal"
BOOTSTRAP = 500
_CI_KEYS = ("accuracy", "macro_f1", "auc_bm", "sensitivity_malignant", "specificity_malignant")


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half); ``None`` without both kinds."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _present_macro_f1(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    f1s = []
    for c in range(k):
        support = int((y == c).sum())
        if support == 0:
            continue
        tp = int(((pred == c) & (y == c)).sum())
        predicted = int((pred == c).sum())
        f1s.append(2 * tp / (support + predicted) if support + predicted else 0.0)
    return float(np.mean(f1s)) if f1s else 0.0


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def site_metrics(y: Sequence[int], probs: np.ndarray, classes: Sequence[str], *,
                 flagged: Sequence[bool] | None = None, threshold: float | None = None) -> dict[str, Any]:
    """The per-site numbers of one set of images (see the module docstring); ``flagged``: each image's
    out-of-distribution verdict; ``threshold``: the operating point on ``p(malignant)``."""
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64).reshape(len(y), len(classes))
    pred = p.argmax(axis=1) if len(y) else np.zeros(0, dtype=np.int64)
    names = list(classes)
    out: dict[str, Any] = {"n": int(len(y)), "accuracy": float((pred == y).mean()) if len(y) else None,
                           "macro_f1": _present_macro_f1(y, pred, len(names)),
                           "classes_present": [c for k, c in enumerate(names) if (y == k).any()],
                           "counts": {c: int((y == k).sum()) for k, c in enumerate(names)},
                           "sensitivity": {c: _ratio(int(((pred == k) & (y == k)).sum()), int((y == k).sum()))
                                           for k, c in enumerate(names)}}
    out["ece"] = expected_calibration_error(p, y) if len(y) else None
    if LESION_FREE in names:
        lesion = y != names.index(LESION_FREE)
        out["lesions_called_normal"] = _ratio(int((pred[lesion] == names.index(LESION_FREE)).sum()),
                                              int(lesion.sum()))
        normal = ~lesion
        out["normals_called_lesion"] = _ratio(int((pred[normal] != names.index(LESION_FREE)).sum()),
                                              int(normal.sum()))
        out["auc_normal"] = binary_auc(p[:, names.index(LESION_FREE)], normal)
    out["auc_bm"] = None
    if POSITIVE in names:
        m = names.index(POSITIVE)
        pm = p[:, m]
        if NEGATIVE in names:
            sel = (y == m) | (y == names.index(NEGATIVE))
            out["auc_bm"] = binary_auc(pm[sel], y[sel] == m)
        if threshold is not None:
            above = pm >= threshold
            out["operating_point"] = {
                "threshold": float(threshold),
                "sensitivity": _ratio(int((above & (y == m)).sum()), int((y == m).sum())),
                "specificity": _ratio(int((~above & (y != m)).sum()), int((y != m).sum())),
                "suspicious_share": float(above.mean()) if len(y) else None}
    if flagged is not None:
        f = np.asarray(flagged, dtype=bool)
        wrong = pred != y
        out["ood_flagged_share"] = float(f.mean()) if len(y) else None
        out["wrong_flagged_share"] = _ratio(int((f & wrong).sum()), int(wrong.sum()))
        out["wrong"] = int(wrong.sum())
    return out


def _flat(metrics: dict[str, Any]) -> dict[str, float | None]:
    op = metrics.get("operating_point") or {}
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "auc_bm": metrics["auc_bm"],
            "sensitivity_malignant": op.get("sensitivity"), "specificity_malignant": op.get("specificity")}


def bootstrap_intervals(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], groups: Sequence[str | None],
                        threshold: float | None, *, replicates: int = BOOTSTRAP, seed: int = 0
                        ) -> dict[str, list[float] | None]:
    """95 % percentile intervals of accuracy, macro-F1, the benign-versus-malignant AUC and, at the operating
    point, sensitivity and specificity for malignancy. Resamples whole groups (patients); an image without a
    group is a group of its own."""
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    ids: dict[str, int] = {}
    member = np.array([ids.setdefault(g if g is not None else f"\0{i}", len(ids)) for i, g in enumerate(groups)])
    by_group = [np.flatnonzero(member == g) for g in range(len(ids))]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in _CI_KEYS}
    for _ in range(int(replicates)):
        pick = rng.integers(0, len(by_group), len(by_group))
        idx = np.concatenate([by_group[g] for g in pick]) if len(pick) else np.zeros(0, dtype=np.int64)
        flat = _flat(site_metrics(y[idx], p[idx], classes, threshold=threshold))
        for k in _CI_KEYS:
            if flat[k] is not None:
                draws[k].append(float(flat[k]))  # type: ignore[arg-type]
    return {k: ([float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if len(v) >= replicates // 2
                else None) for k, v in draws.items()}


def per_site(y: Sequence[int], probs: np.ndarray, classes: Sequence[str], sites: Sequence[str],
             groups: Sequence[str | None], devices: Sequence[str | None] | None = None, *,
             flagged: Sequence[bool] | None = None, threshold: float | None = None,
             replicates: int = BOOTSTRAP) -> dict[str, dict[str, Any]]:
    """:func:`site_metrics` and :func:`bootstrap_intervals` for every site, in order of first appearance;
    each site also lists its devices with their image counts and says whether patients were resampled."""
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64).reshape(len(y), len(classes))
    out: dict[str, dict[str, Any]] = {}
    for site in dict.fromkeys(sites):
        idx = np.flatnonzero(np.asarray(sites) == site)
        g = [groups[i] for i in idx]
        m = site_metrics(y[idx], p[idx], classes, threshold=threshold,
                         flagged=None if flagged is None else [flagged[i] for i in idx])
        m["ci"] = bootstrap_intervals(y[idx], p[idx], classes, g, threshold, replicates=replicates)
        m["ci_resamples"] = "patients" if any(x is not None for x in g) else "images"
        if devices is not None:
            counts: dict[str, int] = {}
            for i in idx:
                key = devices[i] or "unknown"
                counts[key] = counts.get(key, 0) + 1
            m["devices"] = counts
        out[str(site)] = m
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _with_ci(m: dict[str, Any], key: str, value: float | None) -> str:
    ci = (m.get("ci") or {}).get(key)
    return _pct(value) + (f" ({ci[0]:.2f}–{ci[1]:.2f})" if ci and value is not None else "")


def sites_markdown(sites: dict[str, dict[str, Any]]) -> list[str]:
    """A Markdown table of :func:`per_site`'s result, one row per site, and a line on the intervals."""
    lines = ["| site | n | devices | accuracy | macro-F1 (classes present) | benign-vs-malignant AUC | "
             "sensitivity per class | lesions called normal | ECE | at the operating point: sens. / spec. | "
             "out-of-distribution: images / wrong answers |", "|---" * 11 + "|"]
    for site, m in sites.items():
        op = m.get("operating_point") or {}
        devices = ", ".join(f"{d} ({n})" for d, n in (m.get("devices") or {}).items()) or "unknown"
        sens = ", ".join(f"{c} {_pct(v)}" for c, v in m["sensitivity"].items() if v is not None)
        at_op = f"{_pct(op.get('sensitivity'))} / {_pct(op.get('specificity'))} (p ≥ {op['threshold']:.3f})" \
            if op else "no operating point"
        ood = (f"{_pct(m.get('ood_flagged_share'))} / {_pct(m.get('wrong_flagged_share'))}"
               if "ood_flagged_share" in m else "n/a")
        lines.append(f"| {site} | {m['n']} | {devices} | {_with_ci(m, 'accuracy', m['accuracy'])} | "
                     f"{_with_ci(m, 'macro_f1', m['macro_f1'])} ({', '.join(m['classes_present'])}) | "
                     f"{_with_ci(m, 'auc_bm', m['auc_bm'])} | {sens} | {_pct(m.get('lesions_called_normal'))} | "
                     f"{_pct(m['ece'])} | {at_op} | {ood} |")
    how = " or ".join(sorted({m.get("ci_resamples") or "images" for m in sites.values()}))
    lines += ["", f"95 % bootstrap intervals in brackets, resampling {how} (patients where the data has patient ids)."]
    return lines
