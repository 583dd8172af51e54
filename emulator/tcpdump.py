"""tcpdump in a lab namespace: the lab's IKE recorder, which `up` starts, and the recordings of
`vnetlab capture` (capture.py, which also writes their key tables: too much for `up` to load).

The IKE recorder runs for the whole life of a lab, in the backbone namespace: every IKE message
(UDP 500, and UDP 4500 with the non-ESP marker) entering the backbone, each once, into
LAB/ike.pcap. The kernel's filter keeps ESP out, so tunnel traffic costs it nothing. `vnetlab
trace` reads it. tcpdump, not scapy, writes the files: a C program with the kernel's BPF filter,
kept by Debian.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from netns.registry import Registry
from netns.spawn import OUTLIVES_COMMAND, end_with_parent, wait_for_word

from .problems import EnvironmentProblem
from .workers import CWD as WORKER_CWD

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
