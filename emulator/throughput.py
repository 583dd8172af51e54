"""TCP throughput with iperf3 run inside the test-host namespaces, bounded in time.

Per connected pair and direction, one measurement at a time (tunnels of one gateway share its
bandwidth, as in Azure). With SKU emulation on, a rate within 10 % of the cap passes; a rate
below it is re-measured without the cap to tell a slow data plane from a broken shaper.
Also measured: the same over a bare backbone veth, so users see what the tunnel costs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass

from netns import ops

from .executor import Executor, read_snapshot
from .reconcile import SetRate

from .lab import Lab
from .topology import GatewayNode, Host

PORT = 5201


class MeasurementError(RuntimeError):
    """One measurement could not be made; reported as a failed throughput check."""


@dataclass(frozen=True)
class Rate:
    goodput: float  # Mbit/s of TCP payload the receiver got, over the whole run
    wire: float | None  # Mbit/s leaving the watched link (the sender's backbone link), in the steady state


def iperf(workers, server_ns: str, server_ip: str, client_ns: str, duration: float,
          watch: tuple[str, str] | None = None) -> Rate:
    """One iperf3 run of `duration` seconds. With watch=(namespace, interface), also the byte rate
    on that link, sampled between 30 % and 90 % of the run (after slow start): what a cap on
    that link limits, ESP and UDP headers included."""
    if shutil.which("iperf3") is None:
        raise MeasurementError("iperf3 is missing: run scripts/install.sh")
    server = workers.start(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", str(PORT),
                            "--forceflush"], f"iperf3 server {server_ns}", stdin=False)
    banner = [server.stdout.readline() for _ in range(3)]  # a rule, "Server listening on 5201", a rule
    if not any("listening" in line for line in banner):
        raise MeasurementError(f"iperf3 server in {server_ns} did not start: {' '.join(banner).strip()}")
    client = workers.start(["ip", "netns", "exec", client_ns, "iperf3", "-c", server_ip, "-p", str(PORT),
                            "-t", str(duration), "-J", "--connect-timeout", "2000"], f"iperf3 client {client_ns}",
                           stdin=False)
    started = time.monotonic()
    wire = None
    if watch is not None:
        with ops.Namespace(watch[0]) as n:
            samples = []
            for at in (0.3 * duration, 0.9 * duration):
                time.sleep(max(0.0, started + at - time.monotonic()))
                samples.append((time.monotonic(), n.tx_bytes(watch[1])))
        (t0, b0), (t1, b1) = samples
        wire = (b1 - b0) * 8 / (t1 - t0) / 1e6
    try:
        out, _ = client.communicate(timeout=duration + 15)
    except subprocess.TimeoutExpired:
        raise MeasurementError(f"iperf3 {client_ns} -> {server_ip} did not finish") from None
    try:
        result = json.loads(out or "{}")
    except json.JSONDecodeError:
        raise MeasurementError(f"iperf3 {client_ns} -> {server_ip}: unreadable result {out[-300:]!r}") from None
    if "error" in result or "end" not in result:
        raise MeasurementError(f"iperf3 {client_ns} -> {server_ip}: {result.get('error', 'no result')}")
    return Rate(result["end"]["sum_received"]["bits_per_second"] / 1e6, wire)


@dataclass(frozen=True)
class Direction:
    src: Host
    dst: Host
    gateway: GatewayNode | None  # the VNet gateway whose SKU caps this direction (the sender's)


def bare_backbone(lab: Lab, workers, duration: float) -> tuple[str, float] | None:
    """Throughput over the first gateway's backbone veth, unencrypted and unshaped (toward the gateway)."""
    veth = next((v for v in lab.topology.veths if v.ns_a == lab.topology.backbone), None)
    if veth is None:
        return None
    return (f"backbone {veth.addr_a.ip} -> {veth.addr_b.ip}",
            iperf(workers, veth.ns_b, str(veth.addr_b.ip), veth.ns_a, duration).goodput)


def measure(lab: Lab, workers, d: Direction, duration: float) -> Rate:
    watch = (d.gateway.netns, "bb") if d.gateway else None
    return iperf(workers, d.dst.netns, str(d.dst.address), d.src.netns, duration, watch)


def judge(lab: Lab, workers, d: Direction, rate: Rate, duration: float) -> tuple[bool, str]:
    """The SKU cap limits the gateway's backbone link, so the rate on that link is what must be
    within 10 % of it; TCP goodput inside the tunnel is about 8 % lower (ESP, UDP, inner headers)."""
    if not (lab.sku_limit and d.gateway and d.gateway.sku) or rate.wire is None:
        return rate.goodput > 0, "no SKU cap on this direction: raw data-plane rate"
    cap = d.gateway.sku.mbps
    on_link = f"{rate.wire:.1f} Mbit/s on {d.gateway.name}'s backbone link"
    if abs(rate.wire - cap) <= 0.1 * cap:
        return True, f"{on_link}: within 10 % of its {d.gateway.sku.value} cap ({cap} Mbit/s)"
    if rate.wire > cap:
        return False, f"{on_link}: above the {cap} Mbit/s cap by more than 10 %: the SKU shaper is not working"
    executor = Executor(lab)  # lifted and put back through the reconciler: a killed verify's next run restores it
    executor.run([SetRate(d.gateway.netns, None)], read_snapshot(lab.directory))
    try:
        raw = measure(lab, workers, d, duration)
    finally:
        executor.run([SetRate(d.gateway.netns, cap)], read_snapshot(lab.directory))
    if raw.wire is not None and raw.wire < 0.9 * cap:
        return True, (f"{on_link}: the data plane ({lab.dataplane}) is slower than the {cap} Mbit/s cap "
                      f"({raw.wire:.0f} Mbit/s without it)")
    return False, (f"{on_link}: below the {cap} Mbit/s cap although the data plane does "
                   f"{raw.wire or 0:.0f} Mbit/s without it")
