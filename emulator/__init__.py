"""vnetlab: classic Azure VNet-to-VNet plans as live Linux labs with real strongSwan gateways."""

from importlib import resources
from pathlib import Path


def configs_dir() -> Path:
    """The Jinja2 templates and example plans: the package `emulator.configs` once installed, the
    checkout's `configs/` folder when the source tree itself is imported (unit tests)."""
    try:
        return Path(str(resources.files("emulator.configs")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "configs"
