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
from dataclasses import dataclass

from netns import ops

from .lab import Lab
from .topology import GatewayNode, Host

PORT = 5201


class MeasurementError(RuntimeError):
    """One measurement could not be made; reported as a failed throughput check."""


def iperf(workers, server_ns: str, server_ip: str, client_ns: str, duration: float) -> float:
    """Mbit/s received by the server side of one iperf3 run of `duration` seconds."""
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
    return result["end"]["sum_received"]["bits_per_second"] / 1e6


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
            iperf(workers, veth.ns_b, str(veth.addr_b.ip), veth.ns_a, duration))


def judge(lab: Lab, workers, d: Direction, mbps: float, duration: float) -> tuple[bool, str]:
    if not (lab.sku_limit and d.gateway and d.gateway.sku):
        return mbps > 0, "no SKU cap on this direction: raw data-plane rate"
    cap = d.gateway.sku.mbps
    if abs(mbps - cap) <= 0.1 * cap:
        return True, f"within 10 % of {d.gateway.name}'s {d.gateway.sku.value} cap ({cap} Mbit/s)"
    if mbps > cap:
        return False, f"above {d.gateway.name}'s {cap} Mbit/s cap by more than 10 %: the SKU shaper is not working"
    with ops.Namespace(d.gateway.netns) as n:
        n.clear_rate("bb")
        try:
            raw = iperf(workers, d.dst.netns, str(d.dst.address), d.src.netns, duration)
        finally:
            n.limit_rate("bb", cap)
    if raw < 0.9 * cap:
        return True, (f"data plane ({lab.dataplane}) is slower than the {cap} Mbit/s cap: {raw:.0f} Mbit/s "
                      "without the cap")
    return False, f"below the {cap} Mbit/s cap although the data plane does {raw:.0f} Mbit/s without it"
