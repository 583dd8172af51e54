"""Packets on the backbone, kept by tcpdump: the lab's IKE recording, and `vnetlab capture`.

- The IKE recorder runs for the whole life of a lab, in the backbone namespace: every IKE
  message (UDP 500, and UDP 4500 with the non-ESP marker) entering the backbone, each once,
  into LAB/ike.pcap. The kernel's filter keeps ESP out, so tunnel traffic costs it nothing.
  `vnetlab trace` reads it.
- `vnetlab capture` records each chosen gateway's backbone link, everything on it, into
  DIR/GATEWAY.pcap, and writes Wireshark's key tables beside them.
tcpdump, not scapy, writes the files: a C program with the kernel's BPF filter, kept by Debian.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from netns.registry import Registry
from netns.spawn import OUTLIVES_COMMAND, end_with_parent, wait_for_word

from . import importing, interrupts
from .keyfiles import KEYS_FILE
from .keylog import IkeKeys
from .keytables import KeyTables, read_records, tables, write_tables
from .lab import Lab
from .problems import EnvironmentProblem, UsageError
from .topology import GatewayNode
from .workers import CWD as WORKER_CWD

if TYPE_CHECKING:
    from .trace import Message

IKE_PCAP = "ike.pcap"
LISTENING_S = 15.0  # tcpdump says "listening on" within a second, even under load
IKE_FILTER = "udp port 500 or (udp port 4500 and udp[8:4] = 0)"


def _tcpdump() -> str:
    path = shutil.which("tcpdump")
    if path is None:
        raise EnvironmentProblem("tcpdump is missing: run 'sudo scripts/install.sh' (or 'make lab'), or "
                                 "apt-get install tcpdump")
    return path


def start_tcpdump(registry: Registry, what: str, netns: str, iface: str, path: Path, bpf: str | None = None,
                  inbound_only: bool = False, snaplen: int = 65535, buffer_kb: int = 65536,
                  with_parent: bool = False) -> subprocess.Popen:
    """tcpdump in a lab namespace, writing each packet as it comes (-U), journalled by pid; returns
    once it listens. It runs as root (-Z root): the lab's state directory is root's alone.
    The kernel's capture ring holds buffer/snaplen packets: with tcpdump's defaults (2 MB, 256 kB)
    that is 8, and a burst of handshakes lost a quarter of its messages. with_parent: it ends when
    the process that started it dies, even by SIGKILL (`vnetlab capture` killed must not leave a
    capture filling the disk until `down`)."""
    argv = ["ip", "netns", "exec", netns, _tcpdump(), "-i", iface, "-n", "-s", str(snaplen), "-B", str(buffer_kb),
            "-U", "-Z", "root", "--immediate-mode", "-w", str(path), *(["-Q", "in"] if inbound_only else []),
            *([bpf] if bpf else [])]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=WORKER_CWD, **OUTLIVES_COMMAND, preexec_fn=end_with_parent if with_parent else None)
    registry.adopt_process(proc.pid, what)
    try:
        listening, said = wait_for_word(proc.stderr.fileno(), b"listening on", LISTENING_S)
    finally:
        proc.stderr.close()
    if not listening:  # journalled: the caller's teardown ends it if it still runs
        raise EnvironmentProblem(f"{what} did not start within {LISTENING_S:.0f} s: {' '.join(said.split())[-300:]}")
    return proc


def start_ike_recorder(lab_dir: Path, backbone: str, registry: Registry) -> None:
    start_tcpdump(registry, "ike recorder", backbone, "any", lab_dir / IKE_PCAP, IKE_FILTER, inbound_only=True,
                  snaplen=9216, buffer_kb=8192)  # room for about 900 IKE messages at once


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

