"""Topology → strongSwan config files, through Jinja2 templates in configs/templates.

Every value is checked against a strict character set as it enters a file (`conf` filter), so
nothing a plan holds can break out of the strongSwan settings syntax, even if a check upstream
were missed.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import jinja2

from . import configs_dir
from .topology import GatewayNode, Topology

DATAPLANES = ("kernel", "libipsec")
_SAFE = re.compile(r"^[A-Za-z0-9 ./:,_()+-]*$")
FILES = ("strongswan.conf", "swanctl.conf", "secrets.conf")
SECRET_FILES = {"secrets.conf"}


def write_private(path: Path, text: str) -> None:
    """A file only root may read, mode 0600 from the moment it exists (also when one was there)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


class UnsafeValue(ValueError):
    pass


def _conf(value: object) -> str:
    text = str(value)
    if not _SAFE.match(text) or "\n" in text:
        raise UnsafeValue(f"refusing to write {text!r} into a strongSwan config")
    return text


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(configs_dir() / "templates"),
    undefined=jinja2.StrictUndefined,
    autoescape=False,  # noqa: S701 - not HTML; values are guarded by the conf filter
    keep_trailing_newline=True,
)
_env.filters["conf"] = _conf
_compiling = threading.Lock()


def _template(name: str) -> jinja2.Template:
    """Compiled once per process (about 15 ms for the three): jinja2's cache would let the
    executor's parallel lanes, one per gateway, each compile them anew."""
    with _compiling:
        return _env.get_template(f"{name}.j2")


@dataclass(frozen=True)
class RenderedGateway:
    gateway: GatewayNode
    directory: Path
    files: dict[str, str]  # file name -> content


def gateway_dir(base: Path, gw: GatewayNode) -> Path:
    return base / gw.name


def render_gateway(gw: GatewayNode, directory: Path, dataplane: str, keylog: bool = False) -> RenderedGateway:
    """keylog: the lab's daemons also log their session keys into the FIFO workers/keylog.py
    reads. Never for `vnetlab render`: without that reader the log would be a plain file, and
    charon's level 4 prints the pre-shared key."""
    ctx = {"gw": gw, "dir": str(directory), "dataplane": dataplane, "keylog": keylog}
    files = {name: _template(name).render(ctx) for name in FILES}
    return RenderedGateway(gw, directory, files)


def render_topology(topo: Topology, base: Path, dataplane: str) -> list[RenderedGateway]:
    base = base.resolve()
    return [render_gateway(gw, gateway_dir(base, gw), dataplane) for gw in topo.gateways]


def write_rendered(rendered: list[RenderedGateway]) -> None:
    """Write files; directories 0700, secrets 0600 from the moment they exist."""
    for r in rendered:
        r.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(r.directory, 0o700)
        for name, text in r.files.items():
            path = r.directory / name
            mode = 0o600 if name in SECRET_FILES else 0o644
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.chmod(path, mode)
