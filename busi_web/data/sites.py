"""Sites: where each image was acquired, and several datasets trained as one.

A run may train on several datasets (BUSI from Cairo and BUS-BRA from Rio
de Janeiro, say). Each is a *site*: :class:`Source` names one (its dataset,
data folder and parameters), and :class:`CombinedDataset` presents them to
the trainer as one dataset whose samples keep their site and device
(``extra["site"]``, ``extra["device"]``). The class list is the union of the
sites' classes in order of first appearance, so a site that lacks a class
(BUS-BRA has no normal images) trains with the others. Keys are prefixed by
the site (``busi:benign/benign (1).png``), and so are patient groups, so two
sites' patients never merge.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from busi_web.data.datasets import DatasetError, ImageDataset, Sample, check_data_dir
from busi_web.errors import UserError
from busi_web.plugins import PluginRegistry, one_line, owner_module, where

SEPARATOR = "+"  # the run's dataset label of several datasets: "busi+busbra"


@dataclass(frozen=True)
class Source:
    """One dataset of a run: its plugin name, its data folder and its (validated) parameters."""

    dataset: str
    data_dir: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "data_dir": self.data_dir, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Source:
        return cls(str(doc["dataset"]), doc.get("data_dir"), dict(doc.get("params") or {}))


def sources_of(run: Mapping[str, Any]) -> list[Source]:
    """The datasets a stored run trains on: ``params["datasets"]`` for a run of several, else its one dataset."""
    params = run.get("params") or {}
    listed = params.get("datasets")
    if listed:
        return [Source.from_dict(d) for d in listed]
    return [Source(run["dataset"], run.get("data_dir"), dict(params.get("dataset") or {}))]


def dataset_label(names: Sequence[str]) -> str:
    """The label a run of ``names`` is stored under: the name itself for one dataset, else joined by ``+``."""
    return SEPARATOR.join(names)


def dataset_names(label: str) -> list[str]:
    """The dataset names of a run's dataset label (the inverse of :func:`dataset_label`)."""
    return [n for n in (label or "").split(SEPARATOR) if n]


def site_names(names: Sequence[str]) -> list[str]:
    """One site name per dataset: the dataset's name, numbered from the second use on (``imagefolder-2``)."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


class CombinedDataset(ImageDataset):
    """Several datasets as one (see the module docstring). ``parts``: ``(site name, dataset)`` pairs."""

    name = "combined"

    def __init__(self, parts: Sequence[tuple[str, ImageDataset]]):
        if len(parts) < 2:
            raise ValueError("a combined dataset needs at least two datasets")
        modalities = {getattr(ds, "modality", "ultrasound") for _, ds in parts}
        if len(modalities) > 1:
            listed = ", ".join(f"{site} ({ds.modality})" for site, ds in parts)
            raise DatasetError(f"one run trains one modality; these datasets differ: {listed}. Train them apart")
        self.parts = [ds for _, ds in parts]
        self.site_list = [site for site, _ in parts]
        self.modality = modalities.pop()
        self.channels = max(ds.channels for ds in self.parts)
        self.has_duplicates = any(getattr(ds, "has_duplicates", True) for ds in self.parts)
        classes: list[str] = []
        for ds in self.parts:
            classes += [c for c in ds.classes if c not in classes]
        samples: list[Sample] = []
        self._where: list[tuple[int, int]] = []
        for k, (site, ds) in enumerate(parts):
            remap = [classes.index(c) for c in ds.classes]
            for j, s in enumerate(ds.samples):
                _, device = ds.site_of(j)
                samples.append(Sample(key=f"{site}:{s.key}", label=remap[s.label], path=s.path,
                                      mask_paths=s.mask_paths, group=None if s.group is None else f"{site}:{s.group}",
                                      extra={**s.extra, "site": site, "device": device}))
                self._where.append((k, j))
        super().__init__(classes, samples, root=None)

    def _channels(self, image: np.ndarray, ds: ImageDataset) -> np.ndarray:
        from busi_web.data.preprocess import to_channels  # imports torch: not for `busi-web --help`

        return image if ds.channels == self.channels else to_channels(image, self.channels)

    def _part(self, index: int) -> tuple[ImageDataset, int]:
        k, j = self._where[index]
        return self.parts[k], j

    def load_image(self, index: int) -> np.ndarray:
        ds, j = self._part(index)
        return self._channels(ds.load_image(j), ds)

    def load_mask(self, index: int) -> np.ndarray | None:
        ds, j = self._part(index)
        return ds.load_mask(j)

    def has_masks(self) -> bool:
        return any(ds.has_masks() for ds in self.parts)

    def training_items(self, indices: Sequence[int]) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        offsets = self._offsets()
        for k, ds in enumerate(self.parts):
            local = [self._where[i][1] for i in indices if self._where[i][0] == k]
            out += [(offsets[k] + j, v) for j, v in ds.training_items(local)]
        return out

    def training_image(self, index: int, variant: int) -> np.ndarray | None:
        ds, j = self._part(index)
        image = ds.training_image(j, variant)
        return None if image is None else self._channels(image, ds)

    def official_split(self) -> dict[str, list[int]] | None:
        """The parts' own partitions, where they have one: a partial assignment (the other sites' images are
        split by the project's rule), or ``None`` when no site prescribes one."""
        offsets = self._offsets()
        found: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        any_found = False
        for k, ds in enumerate(self.parts):
            own = ds.official_split()
            if own is None:
                continue
            any_found = True
            for part, idx in own.items():
                found[part] += [offsets[k] + j for j in idx]
        return found if any_found else None

    def check_usable(self) -> None:
        for site, ds in zip(self.site_list, self.parts, strict=True):
            try:
                ds.check_usable()
            except DatasetError as exc:
                raise DatasetError(f"{site}: {exc}") from None

    def _offsets(self) -> list[int]:
        offsets, n = [], 0
        for ds in self.parts:
            offsets.append(n)
            n += len(ds)
        return offsets


def build_sources(sources: Sequence[Source], build: Callable[[Source], ImageDataset]) -> ImageDataset:
    """One dataset for ``sources``: the dataset itself for one, a :class:`CombinedDataset` for several.
    ``build`` makes each source's dataset (it raises for a bad one)."""
    if len(sources) == 1:
        return build(sources[0])
    names = site_names([s.dataset for s in sources])
    return CombinedDataset([(site, build(s)) for site, s in zip(names, sources, strict=True)])


def sites_of(dataset: ImageDataset, indices: Sequence[int] | None = None) -> list[str]:
    """The site of each sample of ``indices`` (default: all)."""
    idx = range(len(dataset)) if indices is None else indices
    return [dataset.site_of(i)[0] for i in idx]


def open_sources(registry: PluginRegistry, sources: Sequence[Source]) -> tuple[list[Source], ImageDataset]:
    """Validate each source (its dataset is registered, its parameters are valid, its data folder exists) and
    build the run's dataset. Returns the sources with their parameters typed, and the dataset (one, or several
    combined). Raises :class:`~busi_web.plugins.UnknownPlugin`, :class:`~busi_web.specs.InvalidParameters` or
    :class:`DatasetError` naming the dataset at fault."""
    if not sources:
        raise DatasetError("choose a dataset to train on")
    checked = []
    for s in sources:
        spec = registry.dataset(s.dataset)
        values = spec.validate(s.params)
        root = check_data_dir(s.dataset, spec.needs_data_dir, s.data_dir)
        checked.append(Source(s.dataset, str(root) if root else None, values))

    def build(s: Source) -> ImageDataset:
        try:
            return registry.dataset(s.dataset).build(s.params, root=s.data_dir)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin's factory may raise anything: say which plugin
            owner = registry.owner_of("datasets", s.dataset) or "(unknown)"
            raise DatasetError(f"plugin {owner!r}: dataset {s.dataset!r} could not be read"
                               f"{where(exc, owner_module(registry, owner))} ({type(exc).__name__}: {one_line(exc)})"
                               "; fix or remove the plugin") from None

    return checked, build_sources(checked, build)
