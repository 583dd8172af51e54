"""Network Watcher's fault types, from the reasons the lab gives (status.fault_of): every type the
issue names is reachable, and a connection that is only not established yet has none."""

import pytest

from emulator.status import FAULTS, fault_of

CASES = [
    ("pre-shared key mismatch (IKEv2): TestVNet1 received AUTHENTICATION_FAILED", "Authentication"),
    ("proposal mismatch (NO_PROPOSAL_CHOSEN): TestVNet4 found no acceptable proposal", "IkePolicyMismatch"),
    ("traffic selectors refused (TS_UNACCEPTABLE): TestVNet1 received TS_UNACCEPTABLE", "TrafficSelectorMismatch"),
    ("peer unreachable: no gateway answers at 5.4.3.2 (no answer to IKE_SA_INIT)", "PeerReachability"),
    ("peer unreachable (PeerReachability): TestVNet1's backbone path drops ike (UDP 500)", "PeerReachability"),
    ("the backbone link of TestVNet1 is down: no route to any peer", "PeerReachability"),
    ("NAT traversal fails (NatTraversal): HQ's VPN device sits behind a NAT, so IKE moves to UDP 4500", "NatTraversal"),
    ("gateway daemon of TestVNet1 is not running: its supervisor restarts it", "GatewayNotRunning"),
    ("gateway daemon of TestVNet1 does not answer (timed out): its supervisor restarts it", "GatewayNotRunning"),
    ("key not set on TestVNet4 for VNet1Local (vnetlab set-key)", "KeyNotSet"),
    ("disconnected (Set-AzureVNetGateway -Disconnect); reconnect with vnetlab connect", "Disconnected"),
    ("TestVNet4 has disconnected its side (vnetlab connect --vnet TestVNet4)", "Disconnected"),
]


@pytest.mark.parametrize("reason,kind", CASES)
def test_each_reason_has_its_fault_type(reason, kind):
    fault = fault_of(reason)
    assert fault["type"] == kind and fault["summary"] and fault["recommended_actions"]


def test_every_fault_type_is_covered_and_not_established_is_none():
    assert {kind for _p, kind, _s, _a in FAULTS} == {k for _r, k in CASES}
    assert fault_of("not established yet") is None


def test_a_daemon_that_is_gone_is_told_from_one_that_does_not_answer(tmp_path):
    """status says which: nothing listening (not running), or a daemon that is slow, busy or
    broke the connection (does not answer, with why)."""
    import socket

    from emulator import gateways

    def why(path):
        try:
            gateways.check_alive(path.parent)
        except gateways.GatewayDown as exc:
            return exc
        raise AssertionError("answered")

    assert why(tmp_path / "charon.vici").gone  # no socket: ENOENT
    gone = socket.socket(socket.AF_UNIX)
    gone.bind(str(tmp_path / "charon.vici"))
    gone.close()
    assert why(tmp_path / "charon.vici").gone  # a socket nobody listens on: ECONNREFUSED
    (tmp_path / "charon.vici").unlink()
    with socket.socket(socket.AF_UNIX) as mute:  # listens, never answers: a stuck daemon
        mute.bind(str(tmp_path / "charon.vici"))
        mute.listen()
        exc = why(tmp_path / "charon.vici")
        assert not exc.gone and "timed out" in exc.why


def test_a_device_end_is_labelled_with_the_vnet_it_connects_to():
    from emulator.status import ConnectionStatus

    def end(gateway: str, vnet: str, site: str) -> ConnectionStatus:
        return ConnectionStatus(gateway, vnet, site, "Connected", 0, 0, None, 2, "libipsec", "203.0.113.1")

    assert end("HQ", "TestVNet1", "HQ").label == "HQ -> TestVNet1"  # was "HQ -> HQ"
    assert end("TestVNet1", "TestVNet1", "HQ").label == "TestVNet1 -> HQ"
