"""What a clinician is shown of a prediction, in words shared by the page, the API, the CLI, the report and the
PACS: the class, or why it is withheld. (Torch-free: the command line imports it at start.)"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LESION_FREE = "normal"  # the class that says there is no lesion
WITHHELD = "no reliable answer: this image is unlike the training images"


def is_withheld(ood: Mapping[str, Any] | None) -> bool:
    """Whether the class is withheld: the out-of-distribution verdict says the image is unlike the training ones."""
    return bool(ood and ood.get("out_of_distribution"))
