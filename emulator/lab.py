"""The running lab: up, status, exec, down. With executor.py (which runs every live change the
reconciler plans) and impair.py, the only modules with side effects on the host.

A lab lives in its state directory (`/run/vnetlab/<lab>`, mode 0700; VNETLAB_STATE_DIR moves
it): the plan it was built from (with its keys, mode 0600), `lab.json` (data plane, when),
the resource journal (netns/registry.py) and one directory per gateway holding its rendered
configs, vici socket, pid file and log. `status`, `exec` and `down` read that directory,
never the plan file the user may have edited since.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from ipaddress import IPv4Address
from pathlib import Path
from typing import Callable, Iterator

from netns import nsfs
from netns.registry import Registry, read_jsonl
from netns.spawn import OUTLIVES_COMMAND, wait_for_word

from . import gateways, impair, interrupts
from .events import EVENTS
from .plan import LAB_RE, LAB_RULE, parse_plan_text, read_plan_file
from .model import PathConditions, Plan, SharedKey
from .problems import EnvironmentProblem, Problem, UsageError
from .keyfiles import KEY_PIPE
from .render import write_private
from .tcpdump import start_ike_recorder
from .executor import Executor, lane, read_snapshot
from .netlink import Call, NetlinkWorker
from .reconcile import Action, Initiate, LiveState, StopDaemon, desired_state, diff
from .topology import GatewayNode, Route, Topology, build_topology
from .workers import CWD as WORKER_CWD, command as worker_command

PLAN_COPY = "plan.yaml"
LAB_META = "lab.json"
CHANGES = "changes.json"
LOCK = "lock"
LIBIPSEC_PLUGIN = Path("/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so")
LINKS_DOWN = "links-down.json"  # gateways whose backbone link is down (workers/monitor.py keeps it)
LINKS_FIRST_LOOK_S = 15.0  # the longest a reader waits for the monitor's first look at the links
WORKERS_LOG = "workers.log"
KEY_PIPE_SIZE = 1 << 20  # a burst of handshakes must not make a daemon wait on its key log
WORKER_READY_S = 30.0  # a helper is ready in well under a second, even with 300 gateways


@dataclass(frozen=True)
class Changes:
    """What the classic workflow changed on a running lab, on top of its plan copy (mode 0600:
    it holds keys). Keys are 'VNET/SITE'; a key of None means 'no key'."""

    keys: dict[str, str | None] = field(default_factory=dict)
    gateway_ips: dict[str, str] = field(default_factory=dict)  # site -> address or "auto"
    disconnected: frozenset[str] = frozenset()
    links_down: frozenset[str] = frozenset()  # gateways whose backbone link `vnetlab link down` took down
    paths: dict[str, PathConditions] = field(default_factory=dict)  # gateway -> `vnetlab impair`'s conditions
    clamps: dict[str, int | None] = field(default_factory=dict)  # VNet -> `vnetlab clamp`'s MSS (None: off)

    @staticmethod
    def read(directory: Path) -> "Changes":
        try:
            data = json.loads((directory / CHANGES).read_text())
        except FileNotFoundError:
            return Changes()
        return Changes(data["keys"], data["gateway_ips"], frozenset(data["disconnected"]),
                       frozenset(data.get("links_down", [])),
                       {g: PathConditions.from_json(p) for g, p in data.get("paths", {}).items()},
                       data.get("clamps", {}))

    @staticmethod
    def ref(vnet: str, site: str) -> str:
        return f"{vnet}/{site}"

    def write(self, directory: Path) -> None:
        """Atomically: a reader sees the old file or the new one, never a truncated one."""
        tmp = directory / f".{CHANGES}.{os.getpid()}"
        write_private(tmp, json.dumps({"keys": self.keys, "gateway_ips": self.gateway_ips,
                                        "disconnected": sorted(self.disconnected),
                                        "links_down": sorted(self.links_down),
                                        "paths": {g: p.to_json() for g, p in self.paths.items()},
                                        "clamps": self.clamps}))
        os.replace(tmp, directory / CHANGES)

    def apply(self, plan: Plan) -> Plan:
        for ref, key in self.keys.items():
            vnet, site = ref.split("/", 1)  # the inverse of Changes.ref
            plan = plan.with_key(vnet, site, SharedKey(key) if key else None)
        for site, ip in self.gateway_ips.items():
            plan = plan.with_gateway_ip(site, None if ip == "auto" else IPv4Address(ip))
        for gateway, conditions in self.paths.items():
            plan = plan.with_path(gateway, conditions)
        for vnet, mss in self.clamps.items():
            plan = plan.with_clamp(vnet, mss)
        return plan


STATE_ENV = "VNETLAB_STATE_DIR"


def state_base() -> Path:
    """Where labs keep their state: /run/vnetlab, or $VNETLAB_STATE_DIR, which must be an absolute
    path (an empty or relative one would make the current directory the state base)."""
    given = os.environ.get(STATE_ENV)
    if given is None:
        return Path("/run/vnetlab")
    if not given.startswith("/"):
        raise UsageError(f"${STATE_ENV} is {given!r}: give an absolute directory for the labs' state, "
                         "or unset it (default /run/vnetlab)")
    return Path(given)


def require_root() -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem("the lab changes kernel network state and needs root: run it with sudo "
                                 "(or inside the Vagrant VM: make vagrant-lab)")


def gateway_dir(lab_dir: Path, gw: GatewayNode, index: int) -> Path:
    """Short enough that the vici socket path fits a sockaddr_un (108 bytes)."""
    return lab_dir / (gw.name if len(gw.name) <= 40 else f"{gw.name[:32]}-{index}")


@dataclass(frozen=True)
class Lab:
    """A lab that exists on this machine, read back from its state directory."""

    directory: Path
    plan: Plan
    topology: Topology
    dataplane: str
    created: str
    sku_limit: bool  # gateway bandwidth emulated per SKU (tc on each VNet gateway's backbone link)
    changes: Changes = Changes()

    @property
    def name(self) -> str:
        return self.plan.name

    def disconnected(self, gateway: str, site: str) -> bool:
        return Changes.ref(gateway, site) in self.changes.disconnected

    def gw_dir(self, gw: GatewayNode) -> Path:
        return gateway_dir(self.directory, gw, self.topology.gateways.index(gw))

    def events(self) -> list[dict]:
        """The gateways' own connection events, oldest first (workers/monitor.py writes them)."""
        return read_jsonl(self.directory / EVENTS)

    def links_down(self, just_built: bool = False) -> set[str]:
        """Gateways whose backbone link is down now: taken down by `vnetlab link`, or seen down by
        workers/monitor.py, which watches the links. The monitor writes LINKS_DOWN once it has first
        looked at them, after it has loaded what it heals with (0.2 s after `up` here, seconds on a
        slow machine): while it runs and has not yet, this waits for that look, so that a link
        taken down right after `up` is never reported up. just_built: the caller is the `up` that
        has just set every link as the lab wants it, and reports that (no wait: it made `up` 0.13 s
        slower)."""
        path = self.directory / LINKS_DOWN
        deadline = time.monotonic() + (0 if just_built else LINKS_FIRST_LOOK_S)
        while not path.exists() and time.monotonic() < deadline and Registry(self.directory).live("event monitor"):
            time.sleep(0.05)
        try:
            seen = set(json.loads(path.read_text()))
        except (FileNotFoundError, ValueError):
            seen = set()
        return seen | set(self.changes.links_down)

    def with_changes(self, changes: Changes) -> "Lab":
        """This lab as it will be once `changes` are applied (nothing is written)."""
        return _assemble(self.directory, changes)


def list_labs() -> list[str]:
    base = state_base()
    return sorted(p.name for p in base.iterdir() if (p / LAB_META).exists()) if base.is_dir() else []


CURRENT = ".current"  # in the state base: the lab that commands without --name act on


def set_current(name: str) -> None:
    """`up` makes its lab the current one, like a shell's working directory: later commands
    without --name act on it even while other labs run (the README's walkthrough after `make lab`)."""
    (state_base() / CURRENT).write_text(name + "\n")


def current_lab() -> str | None:
    try:
        name = (state_base() / CURRENT).read_text().strip()
    except OSError:
        return None
    return name or None


def choose_lab(labs: list[str], all_hint: str = "") -> str:
    """The lab a command without --name acts on: the only one, else the current one (said on stderr)."""
    if len(labs) == 1:
        return labs[0]
    current = current_lab()
    if current in labs:
        print(f"(lab '{current}': the current lab, the last one 'up' built; {len(labs)} labs run: "
              f"{', '.join(labs)}; --name picks another)", file=sys.stderr)
        return current
    raise UsageError(f"several labs are running ({', '.join(labs)}) and none is current: choose one with "
                     f"--name{all_hint}")


def open_lab(name: str | None) -> Lab:
    labs = list_labs()
    if name is None:
        if not labs:
            raise EnvironmentProblem("no lab is running on this machine; start one with 'vnetlab up'")
        name = choose_lab(labs)
    directory = state_base() / name
    if name not in labs:
        known = f" (running: {', '.join(labs)})" if labs else ""
        raise EnvironmentProblem(f"no lab named '{name}' is running{known}; start it with 'vnetlab up'")
    return _assemble(directory, Changes.read(directory))


def _assemble(directory: Path, changes: Changes) -> Lab:
    meta = json.loads((directory / LAB_META).read_text())
    plan, _ = parse_plan_text((directory / PLAN_COPY).read_text(), f"lab {directory.name}")
    plan = replace(plan, name=meta["name"])  # the plan copy is verbatim; --name may differ from its 'lab:'
    plan = changes.apply(plan)
    return Lab(directory, plan, build_topology(plan), meta["dataplane"], meta["created"], meta["sku_limit"],
               changes)


@contextmanager
def changing(name: str | None) -> Iterator[Lab]:
    """A running lab, held for one change: concurrent changes to a lab wait for each other (a lock
    file in its state directory), and the lab is read under the lock, so no update is lost."""
    directory = open_lab(name).directory
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield open_lab(directory.name)
    finally:
        os.close(fd)


# -- up ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UpResult:
    lab: Lab
    warnings: list[Problem]
    seconds: float
    reused: bool = False  # --reuse found this lab already running, built from the same plan


def up(plan_path: str | None, name: str | None, dataplane: str, timeout: float, keep_on_error: bool,
       sku_limit: bool = True, reuse: bool = False, netlink: NetlinkWorker | None = None) -> UpResult:
    """netlink: the worker that builds the links and carries out the netlink actions; the CLI
    starts it before it loads this module (emulator/netlink.py)."""
    if netlink is None:  # another caller (demo): a worker of its own
        with NetlinkWorker.start() as worker:
            return up(plan_path, name, dataplane, timeout, keep_on_error, sku_limit, reuse, worker)
    started = time.monotonic()
    text, source = read_plan_file(plan_path)
    plan, warnings = parse_plan_text(text, source)
    if name is not None:
        if not LAB_RE.match(name):
            raise UsageError(f"--name '{name}' is not a valid lab name: use {LAB_RULE}")
        plan = replace(plan, name=name)
    require_root()
    gateways.check_strongswan()
    topo = build_topology(plan)
    for gw in topo.gateways:  # what this kernel cannot do is refused before anything is built
        impair.require_support(gw.path)
    directory = state_base() / plan.name
    if directory.exists():
        if reuse and plan.name in list_labs() and (directory / PLAN_COPY).read_text() == text:
            set_current(plan.name)
            return UpResult(open_lab(plan.name), warnings, time.monotonic() - started, reused=True)
        same = " from another plan" if reuse and plan.name in list_labs() else ""
        raise EnvironmentProblem(f"lab '{plan.name}' already exists{same} ({directory}); remove it with "
                                 f"'vnetlab down --name {plan.name}' or choose another --name")
    taken = [ns for ns in topo.namespaces if nsfs.exists(ns)]
    if taken:
        raise EnvironmentProblem(f"network namespace {taken[0]} already exists and is not this lab's; "
                                 "choose another --name")
    state_base().mkdir(mode=0o700, parents=True, exist_ok=True)
    registry = Registry.create(directory)
    with interrupts.deferred() as check:  # a Ctrl-C stops the build between two steps, then undoes it
        try:
            if interrupts.interrupted():  # a Ctrl-C that Python swallowed before the build began
                raise KeyboardInterrupt
            write_private(directory / PLAN_COPY, text)
            # the helpers start first: their Python starts on another core while the lab is built
            key_recorder = _spawn_key_recorder(directory, topo, registry)
            monitor = _spawn_monitor(directory, topo, registry)
            chosen = _make_namespaces(topo, registry, check, dataplane)
            created = datetime.now(timezone.utc).isoformat(timespec="seconds")
            (directory / LAB_META).write_text(json.dumps({"name": plan.name, "dataplane": chosen, "created": created,
                                                          "sku_limit": sku_limit}))
            lab = Lab(directory, plan, topo, chosen, created, sku_limit)
            # up is apply(desired, nothing), in two parts. The daemons need only their namespaces,
            # so they are started and loaded with their keys and connections while the netlink
            # worker builds the links, then the routes and caps (at_once); the event monitor must
            # listen before the first initiate.
            actions = diff(LiveState(), desired(lab), topo)
            executor = Executor(lab, initiate_timeout=timeout, netlink=netlink)
            with ThreadPoolExecutor(max_workers=2) as pool:
                links = pool.submit(_build_links, topo, netlink, check)
                # it records on "any": links made after it started count
                recorder = pool.submit(start_ike_recorder, directory, topo.backbone, registry)
                state = executor.run([a for a in actions if a.phase < Initiate.phase], LiveState(), at_once=True,
                                     links=links.result)
                links.result()
                recorder.result()
            netlink.finish()  # the initiates need none: it exits meanwhile
            _await_worker(registry, key_recorder)
            _await_worker(registry, monitor)  # told to go: the daemons run now
            executor.run([a for a in actions if a.phase >= Initiate.phase], state)
            check()  # the last moment an interrupt still undoes the lab
            set_current(plan.name)
        except BaseException:
            if not keep_on_error and interrupts.in_main():
                interrupts.ignore()
                remove(registry)
                _remove_base_if_empty()
            raise
    return UpResult(lab, warnings, time.monotonic() - started)


def _make_namespaces(topo: Topology, registry: Registry, check: Callable[[], None], dataplane: str) -> str:
    """Every namespace of the lab, journalled, with its sysctls; returns the data plane chosen
    (choose_dataplane). It is probed in the backbone, made first, while the others are made (the
    probe is a child process: 5-10 ms). `check` runs between namespaces: an interrupt stops the
    build there."""
    def make(ns: str) -> None:
        check()
        registry.create_netns(ns)
        # classic VNets are IPv4: no IPv6 link-local chatter on lab links (and in backbone captures)
        nsfs.set_sysctls(ns, {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1",
                              **({"net.ipv4.ip_forward": "1"} if ns in topo.forwarding else {})})

    make(topo.backbone)
    with ThreadPoolExecutor(max_workers=1) as pool:
        probe = pool.submit(choose_dataplane, dataplane, topo.backbone)
        for ns in topo.namespaces:
            if ns != topo.backbone:
                make(ns)
        return probe.result()


def _build_links(topo: Topology, netlink: NetlinkWorker, check: Callable[[], None]) -> None:
    """Links, addresses and neighbours in the namespaces made (routes and caps are live state:
    reconcile.py), built by the netlink worker: one request per namespace, in creation order.
    Nothing in it is journalled: the namespaces take their links with them. `check` runs between
    namespaces."""
    for ns, calls in link_calls(topo):
        check()
        netlink.run(ns, calls)
    for ns in topo.nats:
        impair.masquerade(ns)


def link_calls(topo: Topology) -> list[tuple[str, list[Call]]]:
    """Each namespace's ops.Namespace calls that build its links, in creation order: a veth is
    created from its first end's namespace (the backbone, or the router of a host), which topology
    always creates before the namespace of its other end, so every interface exists when its
    namespace's turn comes."""
    made, joined, lo = defaultdict(list), defaultdict(list), defaultdict(list)
    for v in topo.veths:
        made[v.ns_a].append(v)
        joined[v.ns_b].append(v)
    for ns, addr in topo.lo_addresses:
        lo[ns].append(addr)
    result = []
    for ns in topo.namespaces:
        ends = [(v.if_a, v.addr_a, v.addr_b.ip, v.mac_b) for v in made[ns]]
        ends += [(v.if_b, v.addr_b, v.addr_a.ip, v.mac_a) for v in joined[ns]]
        calls: list[Call] = [("add_veth", (v.if_a, v.mac_a, v.ns_b, v.if_b, v.mac_b)) for v in made[ns]]
        calls += [("add_address", (ifname, addr)) for ifname, addr, _ip, _mac in ends]
        calls += [("add_address", ("lo", addr)) for addr in lo[ns]]
        calls += [("up", (ifname,)) for ifname in ["lo", *(v.if_b for v in joined[ns])]]  # the ends made here are up
        calls += [("add_neighbour", (ifname, peer_ip, peer_mac)) for ifname, _addr, peer_ip, peer_mac in ends]
        result.append((ns, calls))
    return result


def supported_dataplanes() -> list[str]:
    """The data planes this machine can run, probed in a throwaway namespace (for tests and docs)."""
    found = []
    if LIBIPSEC_PLUGIN.exists():
        found.append("libipsec")
    probe_ns = f"vnetlab-probe-{os.getpid()}"
    nsfs.create(probe_ns)
    try:
        if probe_dataplane(probe_ns) == "kernel":
            found.append("kernel")
    finally:
        nsfs.remove(probe_ns)
    return found


def choose_dataplane(requested: str, netns: str) -> str:
    """auto: what this machine can do. An explicit choice it cannot do is refused, not half-run."""
    libipsec = LIBIPSEC_PLUGIN.exists()
    possible = probe_dataplane(netns)
    if requested == "auto":
        if possible == "libipsec" and not libipsec:
            raise EnvironmentProblem("this kernel has no ESP and strongSwan's kernel-libipsec plugin is missing: "
                                     "install libcharon-extra-plugins (scripts/install.sh)")
        return possible
    if requested == "kernel" and possible != "kernel":
        raise EnvironmentProblem("this kernel cannot carry ESP (no CONFIG_INET_ESP): use --dataplane libipsec "
                                 "(or auto), or run the lab in the Vagrant VM")
    if requested == "libipsec" and not libipsec:
        raise EnvironmentProblem(f"{LIBIPSEC_PLUGIN} is missing: install libcharon-extra-plugins (scripts/install.sh)")
    return requested


def probe_dataplane(netns: str) -> str:
    """'kernel' if this kernel can hold an ESP state (tried in a lab namespace), else 'libipsec'."""
    probe = subprocess.run(
        ["ip", "-n", netns, "xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp",
         "spi", "0x100", "mode", "tunnel", "aead", "rfc4106(gcm(aes))", "0x" + "11" * 20, "128"],
        capture_output=True, text=True)
    if probe.returncode != 0:
        return "libipsec"
    subprocess.run(["ip", "-n", netns, "xfrm", "state", "flush"], capture_output=True)
    return "kernel"


def desired(lab: Lab):
    """What should run in this lab: its topology, less the connections the workflow disconnected and
    the links it took down."""
    return desired_state(lab.topology, lab.changes.disconnected, lab.sku_limit, lab.changes.links_down)


def plan_change(lab: Lab, new: Lab) -> list[Action]:
    """The actions that take the running `lab` to `new` (the same lab with other changes)."""
    return diff(read_snapshot(lab.directory), desired(new), new.topology)


def apply(new: Lab, actions: list[Action], initiate_timeout: float = 5.0) -> None:
    """Run actions planned by plan_change, then record `new`'s changes: only what was applied is recorded."""
    Executor(new, initiate_timeout).run(actions, read_snapshot(new.directory))
    new.changes.write(new.directory)


def converge(name: str | None) -> list[Action]:
    """Bring what runs back to the desired state, e.g. a cap that a killed `verify --throughput` had
    lifted, or a route a command killed half-way had not put back. Returns what it did."""
    with changing(name) as lab:
        actions = plan_change(lab, lab)
        if actions:
            Executor(lab).run(actions, read_snapshot(lab.directory))
        return actions


def heal_gateway(lab_name: str, gateway: str, wedged: bool = False) -> float | None:
    """The supervisor's restart of a daemon that died: apply the desired state to what runs without
    it (start, load, initiate). None when its process still runs (reset-gateway restarted it, or it
    was only slow to answer under load: a second daemon must never be started beside it); else the
    seconds until its tunnels were initiated. wedged: its process runs but has long stopped
    answering (workers/monitor.watch_health); asked once more under the lock, it is stopped first,
    as reset-gateway does."""
    with changing(lab_name) as lab:
        if Registry(lab.directory).live(f"charon {gateway}") and not (
                wedged and gateways.is_silent(lab.gw_dir(lab.topology.gateway(gateway)))):
            return None
        started = time.monotonic()
        applied = read_snapshot(lab.directory).without_gateway(gateway)
        stop = [StopDaemon(gateway)] if wedged else []
        Executor(lab).run([*stop, *diff(applied, desired(lab), lab.topology)], applied)
        return time.monotonic() - started


def heal_routes(lab_name: str, ns: str) -> list[Action]:
    """After a link came back up: the kernel dropped the routes through it (and the kernel data
    plane's own routes), so the routes the kernel really holds replace the snapshot's, and what a
    link coming up needs is applied: the routes, and the gateway's tunnels made again."""
    from netns import ops  # pyroute2: loaded by the commands that need it in this process (see netlink.py)

    with changing(lab_name) as lab:
        with ops.Namespace(ns) as n:
            held = frozenset(Route(ns, dst, via, prohibit) for dst, via, prohibit in n.routes())
        snapshot = read_snapshot(lab.directory)
        # the link was down (the kernel says so by the routes it dropped): what a link coming up needs
        applied = replace(snapshot.with_routes_of(ns, held), links_down=snapshot.links_down | {ns})
        gateway = next(g.name for g in lab.topology.gateways if g.netns == ns)
        actions = [a for a in diff(applied, desired(lab), lab.topology) if lane(a) in (ns, gateway)]
        Executor(lab).run(actions, applied)
        return actions


@dataclass(frozen=True)
class _Worker:
    """A helper started by `up`, not yet known to be ready."""
    what: str
    proc: subprocess.Popen


def _spawn_key_recorder(directory: Path, topo: Topology, registry: Registry) -> _Worker:
    """The session-key recorder (workers/keylog.py). Each daemon's key log is a FIFO, made large,
    opened here for reading and writing and handed to the worker: a daemon opening it never blocks,
    nor one writing to it, even while the worker's Python still starts, so the daemons need not
    wait for it."""
    dirs = [gateway_dir(directory, gw, i) for i, gw in enumerate(topo.gateways)]
    fds: list[int] = []
    try:
        for gw_dir in dirs:
            gw_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.mkfifo(gw_dir / KEY_PIPE, 0o600)
            fds.append(os.open(gw_dir / KEY_PIPE, os.O_RDWR | os.O_NONBLOCK))
            try:
                fcntl.fcntl(fds[-1], fcntl.F_SETPIPE_SZ, KEY_PIPE_SIZE)
            except OSError:
                pass  # above /proc/sys/fs/pipe-max-size: the default size still works
        return _spawn_worker(registry, "key recorder", "keylog",
                             [f"{gw.name}={d}={fd}" for gw, d, fd in zip(topo.gateways, dirs, fds)], pass_fds=fds)
    finally:
        for fd in fds:
            os.close(fd)


def _spawn_monitor(directory: Path, topo: Topology, registry: Registry) -> _Worker:
    """The event recorder (workers/monitor.py), in the host namespace: it only talks to the vici
    sockets. Started with the build, it waits for "go" on its stdin (the daemons run then) before
    it listens. It exits by itself when the daemons go; `down` also stops it by its journalled pid."""
    return _spawn_worker(registry, "event monitor", "monitor",
                         [str(directory), *(f"{gw.name}={gw.netns}={gateway_dir(directory, gw, i)}"
                                            for i, gw in enumerate(topo.gateways))], gated=True)


def _spawn_worker(registry: Registry, what: str, name: str, args: list[str], gated: bool = False,
                  pass_fds: list[int] | None = None) -> _Worker:
    """A long-lived helper of the lab, in the host namespace, journalled by pid. gated: it waits
    for "go" on its stdin (_await_worker says it); pass_fds: files it inherits. What it says on
    stderr (a crash's traceback) goes to the lab's workers.log, which `down` removes with the lab."""
    log = os.open(registry.directory / WORKERS_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with nsfs.signals_held():  # it runs in the host namespace: it must be journalled before any interrupt
            proc = subprocess.Popen(worker_command(name, *args),
                                    stdin=subprocess.PIPE if gated else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=log,
                                    cwd=WORKER_CWD, pass_fds=pass_fds or (), **OUTLIVES_COMMAND)
            registry.adopt_process(proc.pid, what)
    finally:
        os.close(log)
    return _Worker(what, proc)


def _await_worker(registry: Registry, worker: _Worker) -> None:
    """Tell a gated helper to go, then wait until it prints "ready" (it can do its work then). One
    that started at the lowest priority (emulator.workers IN_BACKGROUND) gets the command's back
    first: if it is still starting, a busy machine must not starve it while `up` waits."""
    proc = worker.proc
    try:
        if proc.stdin is not None:
            try:
                os.setpriority(os.PRIO_PROCESS, proc.pid, os.getpriority(os.PRIO_PROCESS, 0))
            except OSError:
                pass  # it has exited: said below
            try:
                proc.stdin.write(b"go\n")
                proc.stdin.close()
            except BrokenPipeError:
                pass  # it has exited: said below, with what it wrote to workers.log
        ready, _said = wait_for_word(proc.stdout.fileno(), b"ready\n", WORKER_READY_S)
    finally:
        proc.stdout.close()
    if not ready:  # no wait without an end: a helper that hangs fails `up`, which then removes the lab
        why = f"said nothing within {WORKER_READY_S:.0f} s" if proc.poll() is None else "exited before it was ready"
        told = (registry.directory / WORKERS_LOG).read_text(errors="replace").strip()[-600:]
        raise EnvironmentProblem(f"the {worker.what} {why}" + (f"; it said: {told}" if told else ""))


# -- down -------------------------------------------------------------------------------------

def down(name: str | None, all_labs: bool) -> list[str]:
    """Remove one lab (or all); returns the names removed (none when there was nothing). Safe twice."""
    require_root()
    existing = list_labs_any()
    if all_labs:
        names = existing
    elif name is None:
        names = [_only_lab(existing)] if existing else []
    else:
        names = [name] if name in existing else []
    for lab_name in names:
        problems = remove(Registry(state_base() / lab_name))
        if problems:
            raise EnvironmentProblem(f"lab '{lab_name}' was not removed completely: {'; '.join(problems)}")
        if current_lab() == lab_name:
            (state_base() / CURRENT).unlink(missing_ok=True)
    _remove_base_if_empty()
    return names


def remove(registry: Registry) -> list[str]:
    """Remove everything a lab journalled. The event monitor goes first: it supervises the gateway
    daemons and would restart them while they are being stopped."""
    registry.stop("event monitor")
    return registry.teardown()


def list_labs_any() -> list[str]:
    """Labs with a state directory, including ones whose 'up' was killed before writing lab.json;
    a directory vnetlab did not make is no lab."""
    base = state_base()
    return sorted(p.name for p in base.iterdir() if p.is_dir() and Registry.owns(p)) if base.is_dir() else []


def _only_lab(labs: list[str]) -> str:
    return choose_lab(labs, all_hint=", or use --all")


def _remove_base_if_empty() -> None:
    """The state base goes when its last lab goes (with a stale current-lab pointer)."""
    base = state_base()
    if base.is_dir() and not any(p.is_dir() and Registry.owns(p) for p in base.iterdir()):
        (base / CURRENT).unlink(missing_ok=True)
    try:
        base.rmdir()
    except OSError:
        pass


# -- exec -------------------------------------------------------------------------------------

def exec_in(lab: Lab, node: str, argv: list[str]) -> int:
    """Replace this process by `ip netns exec NS COMMAND`: the command's exit status and signals are
    its own (127 not found, 126 not executable, 128+N killed by signal N), as in a shell. In a
    gateway's namespace STRONGSWAN_CONF points at that gateway's settings, so swanctl finds its daemon."""
    ns = lab.topology.netns_of(node)
    if ns is None:
        nodes = ", ".join(n for n, _ in lab.topology.nodes)
        raise UsageError(f"no node '{node}' in lab '{lab.name}'; nodes: {nodes} (vnetlab nodes lists them)")
    if not argv:
        raise UsageError("give a command after '--', e.g. vnetlab exec TestVNet1/default -- ping -c1 10.41.0.4")
    program = argv[0] if "/" in argv[0] else shutil.which(argv[0])
    if program is None or not Path(program).exists():
        print(f"vnetlab exec: {argv[0]}: command not found", file=sys.stderr)
        return 127
    if not os.access(program, os.X_OK) or Path(program).is_dir():
        print(f"vnetlab exec: {argv[0]}: permission denied (not an executable file)", file=sys.stderr)
        return 126
    env = dict(os.environ)
    gw = next((g for g in lab.topology.gateways if g.netns == ns), None)
    if gw is not None:
        env["STRONGSWAN_CONF"] = str(lab.gw_dir(gw) / "strongswan.conf")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe("ip", ["ip", "netns", "exec", ns, program, *argv[1:]], env)
