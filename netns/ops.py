"""Small typed wrappers over pyroute2, so the keyword-driven netlink API stays in one place.

Links are created directly inside their namespaces (a veth's peer goes straight into the
other namespace), so no lab interface ever appears in the host namespace.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

NETNS_DIR = Path("/run/netns")
NUD_PERMANENT = 0x80


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def create(name: str) -> None:
    netns.create(name)


def remove(name: str) -> None:
    """Delete a namespace; its links go with it. No error if it is already gone."""
    if exists(name):
        netns.remove(name)


class Namespace:
    """An open netlink socket inside one namespace; use as a context manager."""

    def __init__(self, name: str):
        self.name = name
        self.ipr = IPRoute(netns=name, flags=0)

    def __enter__(self) -> "Namespace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.ipr.close()

    def index(self, ifname: str) -> int:
        found = self.ipr.link_lookup(ifname=ifname)
        if not found:
            raise LookupError(f"no interface {ifname} in namespace {self.name}")
        return found[0]

    def add_veth(self, ifname: str, mac: str, peer_ns: str, peer_ifname: str, peer_mac: str) -> None:
        self.ipr.link("add", ifname=ifname, kind="veth", address=mac,
                      peer={"ifname": peer_ifname, "net_ns_fd": peer_ns, "address": peer_mac})

    def add_neighbour(self, ifname: str, ip: IPv4Address, mac: str) -> None:
        """A permanent neighbour entry. The kernel's neighbour table is one for all namespaces, and
        its garbage-collection limit (gc_thresh3, 1024 by default) counts every dynamic entry of
        every namespace: a 300-VNet lab overflows it. Permanent entries are exempt (Linux >= 4.20)."""
        self.ipr.neigh("replace", dst=str(ip), lladdr=mac, ifindex=self.index(ifname), state=NUD_PERMANENT)

    def up(self, ifname: str) -> None:
        self.ipr.link("set", index=self.index(ifname), state="up")

    def add_address(self, ifname: str, addr: IPv4Interface) -> None:
        self.ipr.addr("add", index=self.index(ifname), address=str(addr.ip), prefixlen=addr.network.prefixlen)

    def del_route(self, dst: IPv4Network, via: IPv4Address | None = None, prohibit: bool = False) -> None:
        if prohibit:
            self.ipr.route("del", dst=str(dst), type="prohibit")
        else:
            self.ipr.route("del", dst=str(dst), gateway=str(via))

    def limit_rate(self, ifname: str, mbit: int) -> None:
        """Token bucket on the interface's egress: at most `mbit` Mbit/s leave through it."""
        self.ipr.tc("add", "tbf", index=self.index(ifname), handle="1:", rate=f"{mbit}mbit",
                    burst=max(32 * 1024, mbit * 1024 * 1024 // 8 // 100), latency="50ms")

    def clear_rate(self, ifname: str) -> None:
        """Remove the root qdisc set by limit_rate (back to the default queue)."""
        self.ipr.tc("del", index=self.index(ifname), handle="1:", root=True)

    def tx_bytes(self, ifname: str) -> int:
        link = self.ipr.get_links(self.index(ifname))[0]
        return int(link.get_attr("IFLA_STATS64")["tx_bytes"])

    def qdisc_kinds(self, ifname: str) -> list[str]:
        return [q.get_attr("TCA_KIND") for q in self.ipr.get_qdiscs(index=self.index(ifname))]

    def add_route(self, dst: IPv4Network, via: IPv4Address | None = None, prohibit: bool = False) -> None:
        if prohibit:
            self.ipr.route("add", dst=str(dst), type="prohibit")
        else:
            self.ipr.route("add", dst=str(dst), gateway=str(via))


def set_sysctls(name: str, settings: dict[str, str]) -> None:
    """Write /proc/sys keys as seen from inside namespace `name` (net.* keys are per namespace)."""
    netns.pushns(name)
    try:
        for key, value in settings.items():
            Path("/proc/sys", key.replace(".", "/")).write_text(value)
    finally:
        netns.popns()


__all__ = ["Namespace", "NetlinkError", "create", "exists", "remove", "set_sysctls"]
