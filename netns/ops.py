"""Small typed wrappers over pyroute2, so the keyword-driven netlink API stays in one place.

Links are created directly inside their namespaces (a veth's peer goes straight into the
other namespace), so no lab interface ever appears in the host namespace.
"""

from __future__ import annotations

import errno
import socket
from contextlib import nullcontext
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .nsfs import inside, signals_held

NUD_PERMANENT = 0x80
RTPROT_KERNEL = 2
RTN_PROHIBIT = 8
NETLINK_ROUTE = 0


class Namespace:
    """An open netlink socket inside one namespace; use as a context manager."""

    def __init__(self, name: str, hold_signals: bool = True):
        """Ctrl-C and SIGTERM wait while the socket is open (a few milliseconds): pyroute2 runs each
        request as an asyncio task, and one cut in the middle is left pending and reported on stderr.
        hold_signals=False in a process that holds several open at once and closes them in any
        order (the netlink worker, which Ctrl-C does not reach): restoring each one's signal mask
        then would unblock them too early, or never. The socket is opened by this thread inside
        the namespace (inside()), not by pyroute2's IPRoute(netns=…), which forks the whole Python
        process for each socket (7-13 ms)."""
        self.name = name
        self._indexes: dict[str, int] = {}
        self._held = signals_held() if hold_signals else nullcontext()
        self._held.__enter__()
        try:
            sock = inside(name, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE))
            self.ipr = IPRoute(fileno=sock.detach())
        except BaseException:
            self._held.__exit__(None, None, None)
            raise

    def __enter__(self) -> "Namespace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.ipr.close()
        finally:
            self._held.__exit__(None, None, None)

    def index(self, ifname: str) -> int:
        """Looked up once per socket: a miss reads every link of the namespace in one request. An
        index stays while its link lives, and the lab deletes no link (a namespace goes with its
        links). One lookup per interface was half of a build's netlink requests (about 0.3 ms of
        CPU each, most of it pyroute2's)."""
        if ifname not in self._indexes:
            self._indexes = {link.get_attr("IFLA_IFNAME"): link["index"] for link in self.ipr.get_links()}
            if ifname not in self._indexes:
                raise LookupError(f"no interface {ifname} in namespace {self.name}")
        return self._indexes[ifname]

    def add_veth(self, ifname: str, mac: str, peer_ns: str, peer_ifname: str, peer_mac: str) -> None:
        """The end made here is up from the start (one request less); pyroute2 cannot say so for
        the peer, which its own namespace brings up."""
        self.ipr.link("add", ifname=ifname, kind="veth", address=mac, state="up",
                      peer={"ifname": peer_ifname, "net_ns_fd": peer_ns, "address": peer_mac})

    def add_neighbour(self, ifname: str, ip: IPv4Address, mac: str) -> None:
        """A permanent neighbour entry. The kernel's neighbour table is one for all namespaces, and
        its garbage-collection limit (gc_thresh3, 1024 by default) counts every dynamic entry of
        every namespace: a 300-VNet lab overflows it. Permanent entries are exempt (Linux >= 4.20)."""
        self.ipr.neigh("replace", dst=str(ip), lladdr=mac, ifindex=self.index(ifname), state=NUD_PERMANENT)

    def up(self, ifname: str) -> None:
        self.set_state(ifname, True)

    def set_mtu(self, ifname: str, mtu: int) -> None:
        self.ipr.link("set", index=self.index(ifname), mtu=mtu)

    def set_state(self, ifname: str, up: bool) -> None:
        self.ipr.link("set", index=self.index(ifname), state="up" if up else "down")

    def add_address(self, ifname: str, addr: IPv4Interface) -> None:
        self.ipr.addr("add", index=self.index(ifname), address=str(addr.ip), prefixlen=addr.network.prefixlen)

    def del_route(self, dst: IPv4Network, via: IPv4Address | None = None, prohibit: bool = False) -> None:
        """No error when the route is gone already (a link that went down takes its routes)."""
        try:
            if prohibit:
                self.ipr.route("del", dst=str(dst), type="prohibit")
            else:
                self.ipr.route("del", dst=str(dst), gateway=str(via))
        except NetlinkError as exc:
            if exc.code != errno.ESRCH:
                raise

    def limit_rate(self, ifname: str, mbit: int) -> None:
        """Token bucket on the interface's egress: at most `mbit` Mbit/s leave through it."""
        self.ipr.tc("replace", "tbf", index=self.index(ifname), handle="1:", rate=f"{mbit}mbit",
                    burst=max(32 * 1024, mbit * 1024 * 1024 // 8 // 100), latency="50ms")

    def delay(self, ifname: str, delay_ms: int, jitter_ms: int) -> None:
        """netem on the interface's egress: each packet waits `delay_ms`, give or take up to
        `jitter_ms` (uniformly; packets given different waits can overtake each other, as on a real path)."""
        self.ipr.tc("replace", "netem", index=self.index(ifname), handle="1:", delay=delay_ms * 1000,
                    jitter=jitter_ms * 1000)

    def clear_root_qdisc(self, ifname: str) -> None:
        """Remove the root qdisc set by limit_rate or delay (back to the default queue); none is fine."""
        try:
            self.ipr.tc("del", index=self.index(ifname), handle="1:", root=True)
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.EINVAL):
                raise

    def tx_bytes(self, ifname: str) -> int:
        link = self.ipr.get_links(self.index(ifname))[0]
        return int(link.get_attr("IFLA_STATS64")["tx_bytes"])

    def qdisc_kinds(self, ifname: str) -> list[str]:
        return [q.get_attr("TCA_KIND") for q in self.ipr.get_qdiscs(index=self.index(ifname))]

    def add_route(self, dst: IPv4Network, via: IPv4Address | None = None, prohibit: bool = False) -> None:
        """Idempotent (replace): applying a route that is already there changes nothing."""
        if prohibit:
            self.ipr.route("replace", dst=str(dst), type="prohibit")
        else:
            self.ipr.route("replace", dst=str(dst), gateway=str(via))

    def routes(self) -> list[tuple[IPv4Network, IPv4Address | None, bool]]:
        """The main table's routes that were added, not the kernel's own (connected) ones:
        (destination, gateway, prohibit)."""
        found = []
        for r in self.ipr.get_routes(family=2, table=254):
            if r["proto"] == RTPROT_KERNEL:
                continue
            dst = IPv4Network(f"{r.get_attr('RTA_DST') or '0.0.0.0'}/{r['dst_len']}")
            via = r.get_attr("RTA_GATEWAY")
            found.append((dst, IPv4Address(via) if via else None, r["type"] == RTN_PROHIBIT))
        return found

    def link_up(self, ifname: str) -> bool:
        """Administratively up and with carrier (operstate UP)."""
        return self.ipr.get_links(self.index(ifname))[0].get_attr("IFLA_OPERSTATE") == "UP"


__all__ = ["Namespace", "NetlinkError"]
