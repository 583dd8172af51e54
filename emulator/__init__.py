"""vnetlab: classic Azure VNet-to-VNet plans as live Linux labs with real strongSwan gateways."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


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
