"""netns.ops sends its netlink requests itself, built with pyroute2's message classes: each must be,
byte for byte, the request pyroute2's own IPRoute makes for the same change (IPBatch compiles
those without sending them), so the kernel is asked exactly what it was asked before."""

import struct
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from netns import ops

HEADER = struct.Struct("=IHHII")
INDEX, PEER_FD = 3, 99
MAC, PEER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"


class _Kernel:
    """The namespace's netlink socket, standing in: keeps what is sent, acknowledges each request."""

    def __init__(self):
        self.sent: list[bytes] = []

    def send(self, data) -> None:
        self.sent.append(bytes(data))

    def recv(self, size: int) -> bytes:
        _length, _kind, _flags, sequence, _port = HEADER.unpack_from(self.sent[-1])
        return HEADER.pack(36, ops.NLMSG_ERROR, 0, sequence, 0) + struct.pack("=i", 0) + self.sent[-1][:16]


@pytest.fixture
def namespace(monkeypatch):
    n = object.__new__(ops.Namespace)  # no socket, no namespace: nothing here needs root
    n.name, n._indexes, n._sequence, n._sock = "t", {"eth0": INDEX}, iter(range(1, 100)), _Kernel()
    monkeypatch.setattr(ops.os, "open", lambda *args: PEER_FD)
    monkeypatch.setattr(ops.os, "close", lambda fd: None)
    return n


def _unnumbered(message: bytes) -> bytes:
    """Without the sequence number and the port, which differ from one socket to another."""
    return message[:8] + bytes(8) + message[16:]


CHANGES = {
    "add_veth": (lambda n: n.add_veth("x0", MAC, "peer", "y0", PEER_MAC),
                 lambda b: b.link("add", ifname="x0", kind="veth", address=MAC, state="up",
                                  peer={"ifname": "y0", "net_ns_fd": PEER_FD, "address": PEER_MAC})),
    "add_address": (lambda n: n.add_address("eth0", IPv4Interface("10.9.0.1/24")),
                    lambda b: b.addr("add", index=INDEX, address="10.9.0.1", prefixlen=24)),
    "up": (lambda n: n.up("eth0"), lambda b: b.link("set", index=INDEX, state="up")),
    "down": (lambda n: n.set_state("eth0", False), lambda b: b.link("set", index=INDEX, state="down")),
    "set_mtu": (lambda n: n.set_mtu("eth0", 1400), lambda b: b.link("set", index=INDEX, mtu=1400)),
    "add_neighbour": (lambda n: n.add_neighbour("eth0", IPv4Address("10.9.0.2"), PEER_MAC),
                      lambda b: b.neigh("replace", dst="10.9.0.2", lladdr=PEER_MAC, ifindex=INDEX,
                                        state=ops.NUD_PERMANENT)),
    "add_route": (lambda n: n.add_route(IPv4Network("10.50.0.0/16"), IPv4Address("10.9.0.2")),
                  lambda b: b.route("replace", dst="10.50.0.0/16", gateway="10.9.0.2")),
    "add_default_route": (lambda n: n.add_route(IPv4Network("0.0.0.0/0"), IPv4Address("10.9.0.2")),
                          lambda b: b.route("replace", dst="0.0.0.0/0", gateway="10.9.0.2")),
    "add_prohibit_route": (lambda n: n.add_route(IPv4Network("10.50.0.0/16"), None, True),
                           lambda b: b.route("replace", dst="10.50.0.0/16", type="prohibit")),
    "del_route": (lambda n: n.del_route(IPv4Network("10.50.0.0/16"), IPv4Address("10.9.0.2")),
                  lambda b: b.route("del", dst="10.50.0.0/16", gateway="10.9.0.2")),
    "del_default_route": (lambda n: n.del_route(IPv4Network("0.0.0.0/0"), IPv4Address("10.9.0.2")),
                          lambda b: b.route("del", dst="0.0.0.0/0", gateway="10.9.0.2")),
    "del_prohibit_route": (lambda n: n.del_route(IPv4Network("10.50.0.0/16"), None, True),
                           lambda b: b.route("del", dst="10.50.0.0/16", type="prohibit")),
    "limit_rate": (lambda n: n.limit_rate("eth0", 100),
                   lambda b: b.tc("replace", "tbf", index=INDEX, handle="1:", rate="100mbit",
                                  burst=100 * 1024 * 1024 // 8 // 100, latency="50ms")),
    "limit_rate_low": (lambda n: n.limit_rate("eth0", 2),
                       lambda b: b.tc("replace", "tbf", index=INDEX, handle="1:", rate="2mbit", burst=32 * 1024,
                                      latency="50ms")),
    "delay": (lambda n: n.delay("eth0", 20, 5),
              lambda b: b.tc("replace", "netem", index=INDEX, handle="1:", delay=20000, jitter=5000)),
    "clear_root_qdisc": (lambda n: n.clear_root_qdisc("eth0"),
                         lambda b: b.tc("del", index=INDEX, handle="1:", root=True)),
}


@pytest.mark.parametrize("change", CHANGES)
def test_each_request_is_the_one_pyroute2s_iproute_makes(namespace, change):
    from pyroute2.iproute.linux import IPBatch

    ours, theirs = CHANGES[change]
    ours(namespace)
    batch = IPBatch()
    theirs(batch)
    assert [_unnumbered(m) for m in namespace._sock.sent] == [_unnumbered(bytes(batch.batch))]


def test_a_refusal_is_the_kernels_errno_and_other_answers_are_skipped(namespace):
    """An answer to an earlier request (one a Ctrl-C cut short) is not taken for this one's."""
    kernel = namespace._sock

    def refuse(size: int) -> bytes:
        _length, _kind, _flags, sequence, _port = HEADER.unpack_from(kernel.sent[-1])
        stale = HEADER.pack(36, ops.NLMSG_ERROR, 0, sequence - 1, 0) + struct.pack("=i", 0) + bytes(16)
        return stale + HEADER.pack(36, ops.NLMSG_ERROR, 0, sequence, 0) + struct.pack("=i", -17) + bytes(16)

    kernel.recv = refuse
    with pytest.raises(ops.NetlinkError) as refused:
        namespace.add_address("eth0", IPv4Interface("10.9.0.1/24"))
    assert refused.value.code == 17  # EEXIST
