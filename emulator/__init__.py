"""vnetlab: classic Azure VNet-to-VNet plans as live Linux labs with real strongSwan gateways."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

TYPE_CHECKING = False  # as typing's, which is no light import: `up` starts its netlink worker first (entry.py)
if TYPE_CHECKING:
    from pathlib import Path


@contextmanager
def importing() -> Iterator[None]:
    """Modules imported in this block load with Python's cyclic garbage collector off, and what
    they made is then frozen out of its later passes (gc.freeze). Loading makes many objects and
    no garbage, yet each pass walks the objects made so far, and so does the last pass at exit.
    Measured here: the probe engine's modules (scapy) load in 0.22 s instead of 0.24 s, and a
    process that loaded them exits in 12 ms instead of 52 ms (`verify` waits for that exit)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_on:
            gc.enable()


def configs_dir() -> Path:
    """The Jinja2 templates and example plans: the package `emulator.configs` once installed, the
    checkout's `configs/` folder when the source tree itself is imported (unit tests). Imports
    lazily: this package's import must be instant (entry.py)."""
    from importlib import resources
    from pathlib import Path

    try:
        return Path(str(resources.files("emulator.configs")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "configs"
