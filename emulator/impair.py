"""Path conditions on a gateway's backbone link, as the kernel does them: the MTU by netlink, loss
and a firewall's drops by nftables (in the gateway's own namespace, so `down` takes them with it).
Delay and jitter are the kernel's netem, on the backbone's end of the link (see reconcile), which
not every kernel has: asked for where it is missing, they are refused before anything changes
(exit 3). Also the remedy Azure asks of VPN devices for a small path MTU, clamping the MSS of the
TCP handshakes the gateway forwards, and the masquerade of a NAT in front of an on-premises device.

A smaller MTU on a gateway's link is not known to the backbone's end of it: a packet too large
for it vanishes without an ICMP "fragmentation needed", the black hole of a path whose ICMP is
filtered. What the gateway itself sends, it knows to fit (fragmenting, or telling the sender)."""

from __future__ import annotations

import os
import subprocess
from functools import cache
from typing import TYPE_CHECKING

from netns import nsfs

from .model import PathConditions
from .problems import EnvironmentProblem

if TYPE_CHECKING:
    from netns.ops import Namespace

TABLE = "vnetlab_path"
CLAMP_TABLE = "vnetlab_mss"
NAT_TABLE = "vnetlab_nat"
DEFAULT_MTU = 1500
MATCHES = {"ike": ("udp sport 500", "udp dport 500"), "natt": ("udp sport 4500", "udp dport 4500"),
           "esp": ("meta l4proto esp",)}


def nft_script(c: PathConditions, ifname: str = "bb") -> str:
    """One transaction: the table is created (so that it exists), deleted, and built again with
    what `c` asks for, on packets the gateway sends and receives on its backbone link."""
    lines = [f"table inet {TABLE}", f"delete table inet {TABLE}"]
    drops = [m for what in sorted(c.block) for m in MATCHES[what]]
    if c.loss:  # in hundredths of a percent; 100 % drops everything
        drops.append(f"numgen random mod 10000 < {round(c.loss * 100)}" if c.loss < 100 else "meta nfproto ipv4")
    if drops:
        lines.append(f"table inet {TABLE} {{")
        for chain, hook, side in (("from_backbone", "input", "iifname"), ("to_backbone", "output", "oifname")):
            lines.append(f"  chain {chain} {{")
            lines.append(f"    type filter hook {hook} priority -10; policy accept;")
            lines += [f'    {side} "{ifname}" {m} counter drop' for m in drops]
            lines.append("  }")
        lines.append("}")
    return "\n".join(lines) + "\n"


def clamp_script(mss: int | None) -> str:
    """One transaction: every TCP SYN the gateway forwards, either way, leaves with an MSS of at most `mss`."""
    lines = [f"table inet {CLAMP_TABLE}", f"delete table inet {CLAMP_TABLE}"]
    if mss:
        rule = f"tcp flags & syn == syn tcp option maxseg size > {mss} tcp option maxseg size set {mss}"
        lines += [f"table inet {CLAMP_TABLE} {{", "  chain forward {",
                  "    type filter hook forward priority mangle; policy accept;", f"    {rule}", "  }", "}"]
    return "\n".join(lines) + "\n"


def masquerade(ns: str, ifname: str = "bb") -> None:
    """A NAT router: what leaves on its backbone link leaves from its own (public) address."""
    _nft(ns, f"table ip {NAT_TABLE} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; "
             f"policy accept;\n    oifname \"{ifname}\" masquerade\n  }}\n}}\n", "the NAT")


def require_support(c: PathConditions) -> None:
    """Refuse, before anything changes, what this kernel cannot do."""
    if (c.delay_ms or c.jitter_ms) and not netem_available():
        raise EnvironmentProblem("delay and jitter need the kernel's netem queueing discipline (sch_netem), which "
                                 "this kernel lacks; mtu, loss and block work without it")


@cache
def netem_available() -> bool:
    """Tried once per command, in a throwaway namespace removed at once."""
    from netns.ops import Namespace, NetlinkError  # pyroute2: only a command that asks for delay loads it

    probe = f"vnetlab-netem-{os.getpid()}"
    nsfs.create(probe)
    try:
        with Namespace(probe) as n:
            n.delay("lo", 1, 0)
        return True
    except NetlinkError:
        return False
    finally:
        nsfs.remove(probe)


def apply(n: Namespace, c: PathConditions, ifname: str = "bb") -> None:
    n.set_mtu(ifname, c.mtu or DEFAULT_MTU)
    _nft(n.name, nft_script(c, ifname), "the path conditions")


def delay(n: Namespace, ifname: str, c: PathConditions) -> None:
    if c.delay_ms:
        n.delay(ifname, c.delay_ms, c.jitter_ms)
    else:
        n.clear_root_qdisc(ifname)


def clamp(n: Namespace, mss: int | None) -> None:
    _nft(n.name, clamp_script(mss), "the TCP MSS clamp")


def _nft(ns: str, script: str, what: str) -> None:
    res = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, capture_output=True, text=True)
    if res.returncode != 0:
        raise EnvironmentProblem(f"nftables refused {what} in {ns}: {res.stderr.strip()[-300:]} "
                                 "(is the nftables package installed? scripts/install.sh installs it)")
