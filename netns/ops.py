"""Small typed netlink operations in one namespace, so the netlink API stays in one place.

Links are created directly inside their namespaces (a veth's peer goes straight into the
other namespace), so no lab interface ever appears in the host namespace.

pyroute2 builds and reads the messages (its message classes, and its tc plugins' parameters);
this module sends them on the namespace's netlink socket and reads the kernel's answer. pyroute2's
IPRoute does the same through an asyncio request pipeline that costs 0.7 ms of CPU per request
(the message itself: 0.05-0.2 ms) and 0.05 s more to import: a default `up` makes some 65
requests, in the netlink worker that is the longest path of the build (emulator/netlink.py).
tests/unit/test_netlink_messages.py checks that each request is, byte for byte, the one IPRoute
would send.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import socket
import struct
import sys
from contextlib import nullcontext
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from itertools import count

# pyroute2's package __init__ imports every module pyroute2 has (IPRoute, NDB, IPDB, WireGuard,
# nl80211…), where the messages need a third of them. So, unless it is loaded already, the package
# is registered without running its __init__, and the messages come from their own modules.
if "pyroute2" not in sys.modules:
    sys.modules["pyroute2"] = importlib.util.module_from_spec(importlib.util.find_spec("pyroute2"))
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402
from pyroute2.netlink.rtnl import (RTM_DELQDISC, RTM_DELROUTE, RTM_GETLINK, RTM_GETQDISC, RTM_GETROUTE,  # noqa: E402
                                   RTM_NEWADDR, RTM_NEWLINK, RTM_NEWNEIGH, RTM_NEWQDISC, RTM_NEWROUTE, TC_H_ROOT)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg  # noqa: E402
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # noqa: E402
from pyroute2.netlink.rtnl.ndmsg import ndmsg  # noqa: E402
from pyroute2.netlink.rtnl.rtmsg import rtmsg  # noqa: E402
from pyroute2.netlink.rtnl.tcmsg import plugins as tc_plugins, tcmsg  # noqa: E402

from .nsfs import NETNS_DIR, inside, signals_held  # noqa: E402

NUD_PERMANENT = 0x80
RTPROT_KERNEL = 2
RTPROT_STATIC = 4  # what pyroute2 gives the routes it adds
RTN_UNICAST = 1
RTN_PROHIBIT = 8
RT_TABLE_MAIN = 254
IFF_UP = 1
NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLMSG_DONE = 3
QDISC_HANDLE = 0x10000  # "1:", the root qdisc the lab sets
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr: length, type, flags, sequence, port
_ERRNO = struct.Struct("=i")
_RECEIVE = 1 << 16  # the kernel sends no datagram larger than 32 KiB (a dump comes in many)


class Namespace:
    """An open netlink socket inside one namespace; use as a context manager."""

    def __init__(self, name: str, hold_signals: bool = True):
        """Ctrl-C and SIGTERM wait while the socket is open (a few milliseconds): a request and its
        answer are one step, never cut in between (the change made, and not known to be).
        hold_signals=False in a process that holds several open at once and closes them in any
        order (the netlink worker, which Ctrl-C does not reach): restoring each one's signal mask
        then would unblock them too early, or never. The socket is opened by this thread inside
        the namespace (inside()): no process is forked for it."""
        self.name = name
        self._indexes: dict[str, int] = {}
        self._sequence = count(1)
        self._held = signals_held() if hold_signals else nullcontext()
        self._held.__enter__()
        try:
            self._sock = inside(name, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE))
            self._sock.bind((0, 0))
        except BaseException:
            self._held.__exit__(None, None, None)
            raise

    def __enter__(self) -> "Namespace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._sock.close()
        finally:
            self._held.__exit__(None, None, None)

    # -- the requests --------------------------------------------------------------------------

    def _send(self, msg, kind: int, flags: int) -> int:
        sequence = next(self._sequence)
        msg["header"]["type"] = kind
        msg["header"]["flags"] = NLM_F_REQUEST | flags
        msg["header"]["sequence_number"] = sequence
        msg.encode()
        self._sock.send(msg.data)
        return sequence

    def _answers(self, sequence: int, cls) -> list:
        """The kernel's answer to one request: the messages it sent (decoded as `cls`), until its
        acknowledgement or the end of a dump; NetlinkError with the kernel's errno if it refused."""
        found = []
        while True:
            data = self._sock.recv(_RECEIVE)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _flags, seq, _port = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise NetlinkError(errno.EBADMSG, f"a netlink message of {length} bytes in namespace {self.name}")
                if seq == sequence:
                    if kind == NLMSG_ERROR:
                        (code,) = _ERRNO.unpack_from(data, offset + _HEADER.size)
                        if code:
                            raise NetlinkError(-code)
                        return found
                    if kind == NLMSG_DONE:
                        return found
                    msg = cls(data[offset:offset + length])
                    msg.decode()
                    found.append(msg)
                offset += (length + 3) & ~3

    def _request(self, msg, kind: int, flags: int = 0) -> None:
        """A change, answered by the kernel's acknowledgement."""
        self._answers(self._send(msg, kind, flags | NLM_F_ACK), type(msg))

    def _dump(self, msg, kind: int) -> list:
        return self._answers(self._send(msg, kind, NLM_F_DUMP), type(msg))

    def _get(self, msg, kind: int) -> list:
        return self._answers(self._send(msg, kind, NLM_F_ACK), type(msg))

    def index(self, ifname: str) -> int:
        """Looked up once per socket: a miss reads every link of the namespace in one request. An
        index stays while its link lives, and the lab deletes no link (a namespace goes with its
        links). One lookup per interface was half of a build's netlink requests."""
        if ifname not in self._indexes:
            links = self._dump(ifinfmsg(), RTM_GETLINK)
            self._indexes = {link.get_attr("IFLA_IFNAME"): link["index"] for link in links}
            if ifname not in self._indexes:
                raise LookupError(f"no interface {ifname} in namespace {self.name}")
        return self._indexes[ifname]

    # -- links, addresses, neighbours ------------------------------------------------------------

    def add_veth(self, ifname: str, mac: str, peer_ns: str, peer_ifname: str, peer_mac: str) -> None:
        """The end made here is up from the start (one request less); the peer is brought up by
        its own namespace."""
        fd = os.open(NETNS_DIR / peer_ns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            peer = {"attrs": [("IFLA_IFNAME", peer_ifname), ("IFLA_NET_NS_FD", fd), ("IFLA_ADDRESS", peer_mac)],
                    "family": 0, "ifi_type": 0, "index": 0, "flags": 0, "change": 0}
            msg = _link(0, IFF_UP, IFF_UP, [
                ("IFLA_IFNAME", ifname), ("IFLA_ADDRESS", mac),
                ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "veth"),
                                             ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer)]})]})])
            self._request(msg, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)
        finally:
            os.close(fd)

    def add_neighbour(self, ifname: str, ip: IPv4Address, mac: str) -> None:
        """A permanent neighbour entry. The kernel's neighbour table is one for all namespaces, and
        its garbage-collection limit (gc_thresh3, 1024 by default) counts every dynamic entry of
        every namespace: a 300-VNet lab overflows it. Permanent entries are exempt (Linux >= 4.20)."""
        msg = ndmsg()
        msg.update({"family": socket.AF_INET, "ifindex": self.index(ifname), "state": NUD_PERMANENT, "flags": 0,
                    "ndm_type": 0, "attrs": [("NDA_DST", str(ip)), ("NDA_LLADDR", mac)]})
        self._request(msg, RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE)

    def up(self, ifname: str) -> None:
        self.set_state(ifname, True)

    def set_mtu(self, ifname: str, mtu: int) -> None:
        self._request(_link(self.index(ifname), 0, 0, [("IFLA_MTU", mtu)]), RTM_NEWLINK)

    def set_state(self, ifname: str, up: bool) -> None:
        self._request(_link(self.index(ifname), IFF_UP if up else 0, IFF_UP, []), RTM_NEWLINK)

    def add_address(self, ifname: str, addr: IPv4Interface) -> None:
        msg = ifaddrmsg()
        msg.update({"family": socket.AF_INET, "prefixlen": addr.network.prefixlen, "flags": 0, "scope": 0,
                    "index": self.index(ifname), "attrs": [("IFA_ADDRESS", str(addr.ip)), ("IFA_LOCAL", str(addr.ip))]})
        self._request(msg, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL)

    def tx_bytes(self, ifname: str) -> int:
        return int(self._link_state(ifname).get_attr("IFLA_STATS64")["tx_bytes"])

    def link_up(self, ifname: str) -> bool:
        """Administratively up and with carrier (operstate UP)."""
        return self._link_state(ifname).get_attr("IFLA_OPERSTATE") == "UP"

    def _link_state(self, ifname: str):
        (link,) = self._get(_link(self.index(ifname), 0, 0, []), RTM_GETLINK)
        return link

    # -- routes ----------------------------------------------------------------------------------

    def add_route(self, dst: IPv4Network, via: IPv4Address | None = None, prohibit: bool = False) -> None:
        """Idempotent (replace): applying a route that is already there changes nothing."""
        self._request(_route(dst, via, prohibit, adding=True), RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE)

    def del_route(self, dst: IPv4Network, via: IPv4Address | None = None, prohibit: bool = False) -> None:
        """No error when the route is gone already (a link that went down takes its routes)."""
        try:
            self._request(_route(dst, via, prohibit, adding=False), RTM_DELROUTE)
        except NetlinkError as exc:
            if exc.code != errno.ESRCH:
                raise

    def routes(self) -> list[tuple[IPv4Network, IPv4Address | None, bool]]:
        """The main table's routes that were added, not the kernel's own (connected) ones:
        (destination, gateway, prohibit)."""
        query = rtmsg()
        query["family"] = socket.AF_INET
        found = []
        for r in self._dump(query, RTM_GETROUTE):
            if r["proto"] == RTPROT_KERNEL or (r.get_attr("RTA_TABLE") or r["table"]) != RT_TABLE_MAIN:
                continue
            dst = IPv4Network(f"{r.get_attr('RTA_DST') or '0.0.0.0'}/{r['dst_len']}")
            via = r.get_attr("RTA_GATEWAY")
            found.append((dst, IPv4Address(via) if via else None, r["type"] == RTN_PROHIBIT))
        return found

    # -- queueing disciplines --------------------------------------------------------------------

    def limit_rate(self, ifname: str, mbit: int) -> None:
        """Token bucket on the interface's egress: at most `mbit` Mbit/s leave through it."""
        self._set_qdisc(ifname, "tbf", rate=f"{mbit}mbit", burst=max(32 * 1024, mbit * 1024 * 1024 // 8 // 100),
                        latency="50ms")

    def delay(self, ifname: str, delay_ms: int, jitter_ms: int) -> None:
        """netem on the interface's egress: each packet waits `delay_ms`, give or take up to
        `jitter_ms` (uniformly; packets given different waits can overtake each other, as on a real path)."""
        self._set_qdisc(ifname, "netem", delay=delay_ms * 1000, jitter=jitter_ms * 1000)

    def _set_qdisc(self, ifname: str, kind: str, **parameters: object) -> None:
        """The root qdisc `kind`, its options computed by pyroute2's plugin for it (the rate table
        of a token bucket, netem's times in the kernel's ticks)."""
        msg = _qdisc(self.index(ifname))
        options = tc_plugins[kind].get_parameters(
            {"kind": kind, "index": msg["index"], "handle": QDISC_HANDLE, "parent": TC_H_ROOT, **parameters})
        msg["attrs"] = [("TCA_KIND", kind), ("TCA_OPTIONS", options)]
        self._request(msg, RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE)

    def clear_root_qdisc(self, ifname: str) -> None:
        """Remove the root qdisc set by limit_rate or delay (back to the default queue); none is fine."""
        try:
            self._request(_qdisc(self.index(ifname)), RTM_DELQDISC)
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.EINVAL):
                raise

    def qdisc_kinds(self, ifname: str) -> list[str]:
        index = self.index(ifname)
        return [q.get_attr("TCA_KIND") for q in self._dump(tcmsg(), RTM_GETQDISC) if q["index"] == index]


def _link(index: int, flags: int, change: int, attrs: list) -> ifinfmsg:
    msg = ifinfmsg()
    msg.update({"family": 0, "ifi_type": 0, "index": index, "flags": flags, "change": change, "attrs": attrs})
    return msg


def _route(dst: IPv4Network, via: IPv4Address | None, prohibit: bool, adding: bool) -> rtmsg:
    """A route of the main table, to add, or to delete: a deletion names only what tells the route
    apart (as pyroute2's does: no origin, and no type for a route through a gateway)."""
    kind = RTN_PROHIBIT if prohibit else RTN_UNICAST if adding else 0
    msg = rtmsg()
    msg.update({"family": socket.AF_INET, "dst_len": dst.prefixlen, "src_len": 0, "tos": 0, "table": RT_TABLE_MAIN,
                "proto": RTPROT_STATIC if adding else 0, "scope": 0, "type": kind, "flags": 0,
                "attrs": [("RTA_DST", str(dst.network_address))] if dst.prefixlen else []})
    if not prohibit:
        msg["attrs"].append(("RTA_GATEWAY", str(via)))
    return msg


def _qdisc(index: int) -> tcmsg:
    msg = tcmsg()
    msg.update({"family": 0, "pad1": 0, "pad2": 0, "index": index, "handle": QDISC_HANDLE, "parent": TC_H_ROOT,
                "info": 0, "attrs": []})
    return msg


__all__ = ["Namespace", "NetlinkError"]
