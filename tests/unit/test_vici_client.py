"""What the lab's one gateway client says to a daemon, checked against a stand-in vici socket
(no root, no charon): the requests it sends and the events it registers for."""

import signal
import socket
import struct
import threading
import time

import pytest
from vici.protocol import Message

from emulator import gateways

CMD_REQUEST, CMD_RESPONSE, EVENT_REGISTER, EVENT_UNREGISTER, EVENT_CONFIRM, EVENT = 0, 1, 3, 4, 5, 7


def _recv(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _send(conn: socket.socket, payload: bytes) -> None:
    conn.sendall(struct.pack("!I", len(payload)) + payload)


def _serve(listener: socket.socket, seen: list[tuple[int, str]], slow: float) -> None:
    """Answer every command with success and confirm every (un)registration; note what came. A
    list-sas streams one SA, then takes `slow` seconds before its answer."""
    conn, _ = listener.accept()
    with conn:
        try:
            while True:
                (length,) = struct.unpack("!I", _recv(conn, 4))
                payload = _recv(conn, length)
                kind, name = payload[0], payload[2:2 + payload[1]].decode()
                seen.append((kind, name))
                if kind != CMD_REQUEST:
                    _send(conn, bytes([EVENT_CONFIRM]))
                    continue
                if name == "list-sas":
                    _send(conn, bytes([EVENT, len(b"list-sa")]) + b"list-sa" + Message.serialize({}))
                    time.sleep(slow)
                _send(conn, bytes([CMD_RESPONSE]) + Message.serialize({"success": "yes"}))
        except (EOFError, OSError):
            pass


def _talk(tmp_path, call, slow: float = 0.0) -> list[tuple[int, str]]:
    seen: list[tuple[int, str]] = []
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "charon.vici"))
        listener.listen()
        server = threading.Thread(target=_serve, args=(listener, seen, slow))
        server.start()
        try:
            call()
        finally:
            server.join(5)
            (tmp_path / "charon.vici").unlink()
    return seen


def test_initiate_and_terminate_never_register_for_control_log(tmp_path):
    """strongSwan before 5.9.11 (Debian 12 ships 5.9.8) can deadlock a daemon for good when
    control-log events go to clients while initiates run (strongSwan #566): the lab sends the
    commands as plain requests, and registers for nothing."""
    assert _talk(tmp_path, lambda: gateways.initiate(tmp_path, "VNet4Local", ["VNet4Local-0"], 5000)) == [
        (CMD_REQUEST, "initiate")]
    assert _talk(tmp_path, lambda: gateways.initiate_in_background(tmp_path, "VNet4Local", ["a", "b"])) == [
        (CMD_REQUEST, "initiate"), (CMD_REQUEST, "initiate")]
    assert _talk(tmp_path, lambda: gateways.terminate(tmp_path, "VNet4Local")) == [(CMD_REQUEST, "terminate")]


def test_a_ctrl_c_while_a_streamed_answer_is_read_stays_a_ctrl_c(tmp_path):
    """Cut short, the vici bindings' cleanup reads the pending answer where it expects a
    confirmation and raises "Unexpected response type 1": CI saw an interrupted `up` exit 1 with
    "gateway daemon of V8 does not answer". The gateway client raises the interrupt instead."""
    def ctrl_c(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, ctrl_c)
    signal.setitimer(signal.ITIMER_REAL, 0.2)  # while the answer to list-sas is awaited
    try:
        with pytest.raises(KeyboardInterrupt):
            _talk(tmp_path, lambda: gateways.list_sas(tmp_path), slow=0.6)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_listener_knows_at_once_that_it_listens_and_is_then_woken_rarely(tmp_path):
    """The monitor says "ready" (and `up` initiates) once its listeners are registered, which it
    learns from their first (None, None). vici's listen() has one timeout for that and for every
    later quiet spell: 50 ms made each `up` wait 50 ms, and woke 300 listeners 6,000 times a second."""
    then_s = 3.0
    got: list[tuple[float, object]] = []

    def listen():
        with gateways.session(tmp_path, timeout=10) as s:
            started = time.monotonic()
            for event in gateways.events(s, ["ike-updown", "child-updown"], then_s=then_s):
                got.append((time.monotonic() - started, event))
                if len(got) == 2:
                    break

    seen = _talk(tmp_path, listen)
    assert [event for _t, event in got] == [(None, None), (None, None)]
    assert got[0][0] < then_s / 2  # at once, not after a quiet spell
    assert got[1][0] - got[0][0] >= then_s * 0.9  # and then not before one
    assert seen[:2] == [(EVENT_REGISTER, "ike-updown"), (EVENT_REGISTER, "child-updown")]
    assert seen[2:] == [(EVENT_UNREGISTER, "ike-updown"), (EVENT_UNREGISTER, "child-updown")]
