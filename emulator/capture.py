"""Packets on the backbone, kept by tcpdump (tcpdump.py): `vnetlab capture`, and the reading of
the lab's IKE recording.

- `vnetlab capture` records each chosen gateway's backbone link, everything on it, into
  DIR/GATEWAY.pcap, and writes Wireshark's key tables beside them.
- `vnetlab trace` and the demo read LAB/ike.pcap, the IKE recorder's, with the keys to decrypt it.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from netns.registry import Registry

from . import importing, interrupts
from .keyfiles import KEYS_FILE
from .keylog import IkeKeys
from .keytables import KeyTables, read_records, tables, write_tables
from .lab import Lab
from .problems import EnvironmentProblem, UsageError
from .tcpdump import IKE_PCAP, start_tcpdump
from .topology import GatewayNode

if TYPE_CHECKING:
    from .trace import Message


def choose_gateways(lab: Lab, vnet: str | None, site: str | None) -> list[GatewayNode]:
    """--vnet V: V's gateway; --site S: the on-premises device of site S; neither: every gateway."""
    if vnet is None and site is None:
        return list(lab.topology.gateways)
    wanted, flag = (vnet, "--vnet") if vnet is not None else (site, "--site")
    kind = "vnet" if vnet is not None else "onprem"
    found = [g for g in lab.topology.gateways if g.name == wanted and (g.kind == kind)]
    if not found:
        names = sorted(g.name for g in lab.topology.gateways if g.kind == kind)
        what = "VNets with a gateway" if kind == "vnet" else "on-premises sites with a VPN device"
        raise UsageError(f"{flag} {wanted}: no such gateway in lab '{lab.name}'; {what}: "
                         f"{', '.join(names) or 'none'}")
    return found


def backbone_iface(lab: Lab, gw: GatewayNode) -> str:
    return lab.topology.backbone_link(gw).if_a


@dataclass(frozen=True)
class CaptureResult:
    pcaps: list[Path]
    tables: KeyTables
    wireshark_dir: Path
    seconds: float


def capture(lab: Lab, chosen: list[GatewayNode], out: Path, duration: float | None,
            listening: Callable[[], None] = lambda: None) -> CaptureResult:
    """Record for `duration` seconds from the moment every chosen link is captured (`listening` is
    called then), or until Ctrl-C / SIGTERM (the normal way to stop an open-ended capture); then
    the key tables, which then hold every SA the pcaps can show."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"-o {out}: cannot create: {exc.strerror or exc}") from None
    registry = Registry(lab.directory)
    procs, pcaps = [], []
    started = time.monotonic()
    with interrupts.sigterm_too():
        try:
            for gw in chosen:
                path = out.resolve() / f"{gw.name}.pcap"
                path.unlink(missing_ok=True)
                procs.append(start_tcpdump(registry, "capture", lab.topology.backbone, backbone_iface(lab, gw), path,
                                           with_parent=True))
                pcaps.append(path)
            listening()
            try:
                deadline = time.monotonic() + duration if duration else None
                while deadline is None or time.monotonic() < deadline:
                    time.sleep(0.05 if deadline is None else min(0.05, max(0.0, deadline - time.monotonic())))
            except KeyboardInterrupt:
                pass
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    kt = key_tables(lab)
    return CaptureResult(pcaps, kt, write_tables(kt, out), time.monotonic() - started)


def key_tables(lab: Lab) -> KeyTables:
    return tables(read_records([lab.gw_dir(gw) for gw in lab.topology.gateways]))


def recorded_messages(lab: Lab, follow: bool = False) -> Iterator[Message]:
    """The lab's IKE conversation since `up`, decoded and decrypted (trace.py); with follow, it
    waits at the end of the recording for more, until interrupted. (trace.py brings scapy and
    cryptography, imported here and not with this module, which `up` loads.)"""
    with importing():
        from .trace import Tracer, read_pcap

    path = lab.directory / IKE_PCAP
    if not path.exists():
        raise EnvironmentProblem(f"lab '{lab.name}' has no IKE recording ({path}): it was built by an older "
                                 "vnetlab; rebuild it with 'vnetlab down' and 'vnetlab up'")
    tracer = Tracer(_ike_keys_loader([lab.gw_dir(g) for g in lab.topology.gateways]),
                    {str(g.public_ip): g.name for g in lab.topology.gateways})
    with open(path, "rb") as fh:
        for item in read_pcap(fh):
            if item is None:
                if not follow:
                    return
                time.sleep(0.2)
                continue
            msg = tracer.message(*item)
            if msg is not None:
                yield msg


def _ike_keys_loader(dirs: list[Path]) -> Callable[[], list[IkeKeys]]:
    """The gateways' IKE keys, read again only when a key file has grown: trace asks at every
    message of an SA it has no key for."""
    last: dict = {"stamp": None, "keys": []}

    def load() -> list[IkeKeys]:
        stamp = tuple(p.stat().st_size if p.exists() else -1 for p in (d / KEYS_FILE for d in dirs))
        if stamp != last["stamp"]:
            last.update(stamp=stamp, keys=[r for r in read_records(dirs) if isinstance(r, IkeKeys)])
        return last["keys"]
    return load

