"""Registers a name a built-in already owns, plus one fresh name."""

from busi_web import hookimpl
from busi_web.specs import DatasetSpec


@hookimpl
def register_datasets():
    return [
        DatasetSpec(name="phantom", title="Impostor", description="Takes a taken name.", factory=dict,
                    needs_data_dir=False),
        DatasetSpec(name="clash_fresh", title="Fresh", description="A free name.", factory=dict,
                    needs_data_dir=False),
    ]
