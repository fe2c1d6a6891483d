"""Reading a mini-MIAS folder: the rows of Info.txt, the scan files, and which woman a scan belongs to.

Info.txt has one row per abnormality, ``REFNUM BG CLASS SEVERITY X Y RADIUS``
(``mdb001 G CIRC B 535 425 197``); a normal scan has only ``REFNUM BG NORM``.
The reader skips the header, blank lines and stray text, keeps every row of a
scan with several lesions, and leaves the coordinates unset when a row has
none (``mdb216 D CALC M *NOTE 3*``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from busi_web.data.datasets import DatasetError

ABNORMALITIES = ("CALC", "CIRC", "SPIC", "MISC", "ARCH", "ASYM")
SCAN_SUFFIXES = (".pgm", ".png")
LAYOUT = "the mini-MIAS folder (all-mias): Info.txt plus one scan per REFNUM, mdb001.pgm or mdb001.png"
_ROW = re.compile(r"^\s*(?P<ref>[A-Za-z]+\d+)\s+(?P<rest>.*)$")


@dataclass(frozen=True)
class InfoRow:
    """One abnormality (or a normal scan) from Info.txt; ``x``/``y``/``radius`` are ``None`` when not given."""

    refnum: str
    background: str
    abnormality: str
    severity: str | None = None
    x: float | None = None
    y: float | None = None
    radius: float | None = None
    line: int = 0

    @property
    def normal(self) -> bool:
        return self.abnormality == "NORM"


def parse_info(path: str | Path) -> list[InfoRow]:
    """The rows of an Info.txt file, in file order; lines that are not a scan's row are skipped.

    A row is ``REFNUM BG CLASS [SEVERITY [X Y RADIUS]]``; anything after the
    first tokens that is not a number (``*NOTE 3*``) leaves the coordinates unset.
    """
    rows: list[InfoRow] = []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}; expected {LAYOUT}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        m = _ROW.match(line)
        if m is None:
            continue
        tokens = m.group("rest").split()
        if len(tokens) < 2 or tokens[1].upper() not in (*ABNORMALITIES, "NORM"):
            continue  # the header (REFNUM BG CLASS ...) or a stray note
        cls = tokens[1].upper()
        severity = tokens[2].upper() if cls != "NORM" and len(tokens) > 2 and tokens[2].upper() in "BM" else None
        numbers = _numbers(tokens[3:6]) if severity else None
        x, y, radius = numbers if numbers else (None, None, None)
        rows.append(InfoRow(m.group("ref").lower(), tokens[0].upper(), cls, severity, x, y, radius, number))
    return rows


def _numbers(tokens: Sequence[str]) -> tuple[float, float, float] | None:
    try:
        values = tuple(float(t) for t in tokens)
    except ValueError:
        return None
    return values if len(values) == 3 else None  # type: ignore[return-value]


def pair_of(refnum: str) -> str:
    """The woman a scan belongs to: scans 2k-1 and 2k (mdb001 and mdb002) are her left and right breasts."""
    n = int(re.sub(r"\D", "", refnum) or 0)
    return f"pair{(n + 1) // 2:03d}"


def parse_classes(raw: str | Sequence[str] | None) -> list[str]:
    """Abnormality classes from ``"CALC, circ"`` (or a list); empty means all. Raises DatasetError for unknown ones."""
    items = raw.replace(";", ",").split(",") if isinstance(raw, str) else list(raw or [])
    wanted = [c.strip().upper() for c in items if c.strip()]
    unknown = [c for c in wanted if c not in ABNORMALITIES]
    if unknown:
        raise DatasetError(f"unknown abnormality class(es) {', '.join(unknown)}; "
                           f"choose from {', '.join(ABNORMALITIES)}")
    return wanted


def check_root(root: str | Path | None) -> Path:
    if root is None or not str(root).strip():
        raise DatasetError(f"the mias dataset needs a data folder: {LAYOUT}")
    path = Path(root).expanduser()
    if not path.is_dir():
        why = "is not a folder" if path.exists() else "does not exist"
        raise DatasetError(f"data folder {path} {why}; give {LAYOUT}")
    return path


def info_file(path: Path) -> Path:
    for p in path.iterdir():
        if p.name.lower() == "info.txt" and p.is_file():
            return p
    raise DatasetError(f"{path} has no Info.txt; give {LAYOUT} (Info.txt comes with the mini-MIAS download)")


def scan_files(path: Path) -> dict[str, Path]:
    """``refnum -> scan file``; a .pgm wins over a .png of the same name (the original distribution's format)."""
    found: dict[str, Path] = {}
    for p in sorted(path.iterdir(), key=lambda q: SCAN_SUFFIXES.index(q.suffix.lower())
                    if q.suffix.lower() in SCAN_SUFFIXES else 9, reverse=True):
        if p.suffix.lower() in SCAN_SUFFIXES and p.is_file() and not p.name.startswith("."):
            found[p.stem.lower()] = p
    if not found:
        raise DatasetError(f"{path} holds no scans (.pgm or .png); give {LAYOUT}")
    return found
