"""strongSwan gateways: one charon per gateway namespace, controlled over its own vici socket.

Each charon runs as `ip netns exec NS unshare --mount sh -c '…; exec charon'`: one pid through
every exec, and its own mount namespace with a private tmpfs on /run, so that its compiled-in
/var/run/charon.pid does not collide with the other gateways'. The lab directory (itself under
/run) is bind-mounted back into that tmpfs, so configs, vici socket and log keep their paths.
All these mounts live and die with the daemon's mount namespace.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import vici

from netns.spawn import OUTLIVES_COMMAND

from . import interrupts
from .problems import EnvironmentProblem
from .swanconf import ViciConfig

CHARON = Path("/usr/lib/ipsec/charon")
CLOSED_STATES = {"DELETING", "DELETED", "DESTROYING"}  # CHILD_SA states whose bytes its closing line holds
_SPAWN = ('mount --bind "$1" /tmp && mount -t tmpfs -o mode=0755 vnetlab-run /run && mkdir -p "$1" '
          '&& mount --bind /tmp "$1" && exec "$2"')


def check_strongswan() -> None:
    if not CHARON.exists():
        raise EnvironmentProblem(f"strongSwan's daemon {CHARON} is missing: run 'sudo scripts/install.sh' "
                                 "(or 'make lab', which does it), or install strongswan-charon, strongswan-swanctl "
                                 "and libcharon-extra-plugins")


def start_charon(netns: str, directory: Path, lab_dir: Path) -> subprocess.Popen:
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "STRONGSWAN_CONF": str(directory / "strongswan.conf")}
    log = open(directory / "charon.stderr", "wb")
    try:
        return subprocess.Popen(
            [shutil.which("ip") or "ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "private",
             "sh", "-c", _SPAWN, "sh", str(lab_dir), str(CHARON)],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **OUTLIVES_COMMAND)
    finally:
        log.close()


# How long a daemon is given to answer before it counts as silent: a loaded machine (the emulated
# test guest runs some 20 times slower) must never have a slow daemon taken for a wedged one.
SILENT_AFTER_S = 10.0


def socket_path(directory: Path) -> Path:
    return directory / "charon.vici"


@contextmanager
def session(directory: Path, timeout: float = 10.0) -> Iterator[vici.Session]:
    """The one way to a gateway's daemon. A daemon that is gone, or goes away mid-request, is GatewayDown.
    A Ctrl-C stays a Ctrl-C: the vici bindings' cleanup of a streamed request that it cut short
    (unregister, then read the confirmation) reads the request's pending answer instead and raises
    "Unexpected response type 1", which hid the interrupt. CI saw `up` interrupted while it read the
    gateways' states exit 1 with "gateway daemon of V8 does not answer"."""
    sock = _connect(socket_path(directory), timeout)
    try:
        yield vici.Session(sock)
    except (OSError, vici.exception.SessionException) as exc:
        if isinstance(exc, GatewayDown):
            raise
        if interrupts.raised_while_interrupted(exc):
            raise KeyboardInterrupt from exc
        raise GatewayDown(directory, f"the connection broke: {exc}") from None
    finally:
        sock.close()


class GatewayDown(EnvironmentProblem, ConnectionError):
    """A gateway's daemon does not answer on its vici socket: exit 3 with what to do, never a traceback."""

    def __init__(self, directory: Path, why: str, gone: bool = False):
        self.why = why
        self.gone = gone  # nothing listens on the socket: the daemon is not running (not slow, not busy)
        super().__init__(f"the strongSwan daemon of gateway {directory.name} is not answering ({why}); nothing was "
                         f"changed. 'vnetlab status' shows the gateways; 'vnetlab down' then 'vnetlab up' rebuilds the "
                         f"lab (its log: {directory / 'charon.log'})")


def _connect(path: Path, timeout: float) -> socket.socket:
    """Connect to a vici socket; a full listen backlog (many parallel callers) is retried briefly."""
    deadline = time.monotonic() + min(timeout, 3.0)
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            return sock
        except (BlockingIOError, InterruptedError) as exc:
            sock.close()
            if time.monotonic() > deadline:
                raise GatewayDown(path.parent, f"busy: {exc}") from None
            time.sleep(0.005)
        except OSError as exc:
            sock.close()
            raise GatewayDown(path.parent, exc.strerror or str(exc),
                              gone=exc.errno in (errno.ENOENT, errno.ECONNREFUSED)) from None


def events(s: vici.Session, kinds: list[str], then_s: float) -> Iterator[tuple[Any, Any]]:
    """The session's events of these kinds, as vici's listen() yields them, (None, None) when none
    came for a while: the first (None, None) at once after the registration, so the caller knows
    it listens (the monitor's "ready", for which `up` waits), and later ones every then_s. vici's
    listen() takes one timeout for both: 50 ms made every `up` wait 50 ms for the first, and woke
    each listener 20 times a second for nothing (6,000 wake-ups a second at 300 gateways)."""
    receive = s.transport.receive
    wait = 0.001

    def patient(timeout=vici.protocol.RECV_TIMEOUT_DEFAULT):  # the listen's own reads only
        return receive(timeout if timeout is vici.protocol.RECV_TIMEOUT_DEFAULT else wait)

    s.transport.receive = patient
    for event in s.listen(kinds, timeout=wait):
        yield event
        wait = then_s


def wait_ready(directory: Path, proc: subprocess.Popen | None, deadline: float) -> None:
    """Until the daemon answers on vici; raises if it died or the deadline passed. Polled every
    2 ms at first (a daemon boots in 30-100 ms, and `up` waits on it), then every 10 ms: a big lab's
    sixteen lanes of daemons that boot slowly would otherwise take a core just to ask."""
    started = time.monotonic()
    while True:
        if proc is not None and proc.poll() is not None:
            err = (directory / "charon.stderr").read_text(errors="replace").strip()
            raise EnvironmentProblem(f"the strongSwan daemon for {directory.name} exited ({proc.returncode}): "
                                     f"{err[-300:] or 'see ' + str(directory / 'charon.log')}")
        try:
            with session(directory, timeout=1.0) as s:
                s.version()
                return
        except (ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise EnvironmentProblem(f"the strongSwan daemon for {directory.name} did not open its vici "
                                         f"socket in time; see {directory / 'charon.log'}") from None
            time.sleep(0.002 if time.monotonic() - started < 0.2 else 0.01)


# kernel-libipsec receives the tunnel's ESP (in UDP 4500) on charon's IKE socket, one datagram per
# read by one thread. The socket's receive buffer is the namespace's default, 208 KiB, about 90
# packets: a few milliseconds without the CPU (two cores shared by both daemons, the hosts' TCP and
# the forwarding) and the kernel drops what arrives. At full rate it dropped one ESP packet in ten
# (UdpRcvbufErrors), and the tunnel's TCP retransmitted them. A real gateway's ESP is the kernel's
# and has no such socket. strongSwan has no setting for it, and net.core.rmem_default is read-only
# outside the host's namespace; so the lab sets the size on the daemon's own sockets (the kernel
# doubles it for its bookkeeping): 2 MiB left no drops and no added latency under load.
ESP_RECEIVE_BUFFER = 1024 * 1024
_SO_RCVBUFFORCE = 33  # root's SO_RCVBUF, past net.core.rmem_max
_SYS_PIDFD_GETFD = 438  # Linux 5.6; one number for x86-64, arm64 and the others that share new syscalls' numbers
_libc = ctypes.CDLL(None, use_errno=True)


def widen_receive_buffers(pid: int, size: int = ESP_RECEIVE_BUFFER) -> int:
    """Give the bound UDP sockets of a running daemon a receive buffer of `size`, through a copy of
    each descriptor (pidfd_getfd(2): the copy is the same socket). Returns how many. Best effort:
    on a kernel older than 5.6, or for a daemon already gone, the tunnel is only slower."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return 0
    widened = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    continue
            except OSError:
                continue
            copy = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(fd), 0)
            if copy < 0:
                continue
            try:
                s = socket.socket(fileno=copy)
            except OSError:
                os.close(copy)
                continue
            with s:
                if (s.type == socket.SOCK_DGRAM and s.family in (socket.AF_INET, socket.AF_INET6)
                        and s.getsockname()[1]):
                    s.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
                    widened += 1
    except OSError:
        pass
    finally:
        os.close(pidfd)
    return widened


def load(directory: Path, config: ViciConfig) -> None:
    """Load keys and connections. start_action is left to the lab, which initiates explicitly
    once both ends of every tunnel are loaded (two daemons both starting race each other)."""
    with session(directory) as s:
        for secret in config.secrets:
            s.load_shared(secret)
        for name, body in config.connections.items():
            s.load_conn({name: _without_autostart(body)})


def _without_autostart(body: dict[str, Any]) -> dict[str, Any]:
    children = {n: {**c, "start_action": "none"} for n, c in body.get("children", {}).items()}
    return {**body, "children": children}


def _unstreamed(s: vici.Session, command: str, message: dict[str, Any]) -> None:
    """initiate and terminate as plain requests: the vici bindings' own methods register the
    client for control-log events, and strongSwan before 5.9.11 (Debian 12 ships 5.9.8) can
    deadlock a daemon for good when several initiates or terminates run while such events are
    raised (strongSwan #566): it lives on and never answers again (the supervisor's health watch
    restarts such a daemon; this keeps the lab from causing it). The log lines are not needed:
    `status` reads why a tunnel failed from both daemons' logs. Raises CommandException when it fails."""
    s.request(command, message)


def terminate(directory: Path, conn: str) -> None:
    """Close every IKE_SA of a connection (and its CHILD_SAs); nothing to do when there is none."""
    with session(directory) as s:
        try:
            _unstreamed(s, "terminate", {"ike": conn, "timeout": 2000, "force": "yes"})
        except vici.exception.CommandException:
            pass  # no matching SA


def unload(directory: Path, conn: str) -> bool:
    """Unload a connection; False when it was not loaded (nothing to do)."""
    with session(directory) as s:
        try:
            s.unload_conn({"name": conn})
        except vici.exception.CommandException:
            return False
    return True


def check_alive(directory: Path, timeout: float = 2.0) -> None:
    """Raise GatewayDown unless the daemon answers: asked before a change is applied or recorded."""
    with session(directory, timeout=timeout) as s:
        s.version()


def is_silent(directory: Path) -> bool:
    """Whether the daemon is there (its socket takes connections) but gives no answer, even given
    SILENT_AFTER_S: a wedged daemon (strongSwan #566), not a dead one and not a busy one."""
    try:
        check_alive(directory, SILENT_AFTER_S)
    except GatewayDown as exc:
        return not exc.gone
    return False


def initiate(directory: Path, conn: str, children: list[str], timeout_ms: int) -> bool:
    """Initiate a connection's CHILD_SAs and wait until each is established or has failed.
    Why one failed is not taken from here: `status` reads it from both daemons' logs."""
    try:
        with session(directory, timeout=timeout_ms / 1000 + 5) as s:
            for child in children:
                _unstreamed(s, "initiate", {"child": child, "ike": conn, "timeout": timeout_ms, "init-limits": False})
        return True
    except (vici.exception.CommandException, ConnectionError, OSError):
        return False


def initiate_in_background(directory: Path, conn: str, children: list[str]) -> None:
    """Start initiating and return at once (a peer outside the lab: a real gateway keeps trying)."""
    with session(directory) as s:
        for child in children:
            _unstreamed(s, "initiate", {"child": child, "ike": conn, "timeout": -1})


@dataclass(frozen=True)
class SaState:
    """What vici says about one connection on one gateway."""

    ike_state: str | None  # CONNECTING, ESTABLISHED, ... or None when there is no IKE_SA
    child_installed: bool
    installed_children: frozenset[str]  # names of the installed CHILD_SAs
    peer_answered: bool  # the responder SPI is known: the peer replied at least once
    bytes_in: int
    bytes_out: int
    established_seconds_ago: int | None
    ike_version: int | None
    encryption: str | None
    # IKE's NAT detection found this side's own address changed on the way (nat-local). Its
    # nat-remote is no proof of a NAT: kernel-libipsec fakes NAT detection to force UDP encapsulation.
    behind_nat: bool = False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def list_sas(directory: Path) -> dict[str, SaState]:
    """Per connection name: the best SA state (an installed CHILD_SA wins)."""
    result: dict[str, SaState] = {}
    with session(directory) as s:
        for entry in s.list_sas():
            for name, ike in entry.items():
                conn = _text(name)
                children = list(ike.get("child-sas", {}).values())
                installed = [c for c in children if _text(c.get("state", "")) == "INSTALLED"]
                live = [c for c in children if _text(c.get("state", "")) not in CLOSED_STATES]
                names = {_text(c.get("name", "")) for c in installed}
                spi = _text(ike.get("responder-spi", "0"))
                state = SaState(
                    ike_state=_text(ike.get("state", "")),
                    child_installed=bool(installed),
                    installed_children=frozenset(names),
                    peer_answered=spi.strip("0") != "",
                    # every SA still carrying traffic: a rekeyed one (IKEv1 keeps using it until it
                    # expires) counts until it closes, and is then counted from its closing line
                    bytes_in=sum(int(_text(c.get("bytes-in", "0"))) for c in live),
                    bytes_out=sum(int(_text(c.get("bytes-out", "0"))) for c in live),
                    established_seconds_ago=int(_text(ike["established"])) if "established" in ike else None,
                    ike_version=int(_text(ike.get("version", "0"))) or None,
                    encryption=(f"{_text(installed[0].get('encr-alg'))}-{_text(installed[0].get('encr-keysize'))}"
                                if installed and "encr-alg" in installed[0] else None),
                    behind_nat=_text(ike.get("nat-local", "")) == "yes",
                )
                old = result.get(conn)
                if old is None or (state.child_installed and not old.child_installed):
                    result[conn] = state
    return result
