"""Its hook raises."""

from busi_web import hookimpl


@hookimpl
def register_backbones():
    raise RuntimeError("the broken plugin's hook exploded")
