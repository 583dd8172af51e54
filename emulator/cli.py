"""`vnetlab`: a thin argparse layer over plan, render, netcfg and lab. Exit codes:
0 success · 1 a check failed · 2 bad input · 3 the environment lacks something."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import __doc__ as PKG_DOC
from . import importing, interrupts
from .model import GatewayType, Sku
from .problems import ExitCode, PlanError, UsageError, VnetlabError
from .report import plan_summary, print_json, print_plan_summary, print_problems, write_output

if TYPE_CHECKING:
    from .netlink import NetlinkWorker

EPILOG = """exit codes: 0 success, 1 a check failed (tunnel not up, probe failed), 2 bad input
(plan, file, arguments), 3 the environment lacks something (not root, strongSwan missing, no lab).

typical session (as root):
  vnetlab validate                       check the default plan (the classic walkthrough)
  vnetlab up                             build it: namespaces, gateways, IKE tunnels
  vnetlab status                         Get-AzureVNetConnection, for every VNet
  vnetlab exec TestVNet1/default -- ping -c1 10.41.0.4
  vnetlab down                           remove everything the lab created
"""


def _seconds(low: float, high: float):
    """An argparse type: a number of seconds within [low, high]."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value:g} is out of range: give {low:g} to {high:g} seconds")
        return value
    return parse


def _plan_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", nargs="?", metavar="PLAN",
                   help="plan file (YAML); default: the classic walkthrough's plan shipped with vnetlab")


def _name_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", metavar="LAB", help="which running lab (default: the only one, else the current lab: "
                   "the last one that 'up' built)")


class _Version(argparse.Action):
    """--version: vnetlab's, and the strongSwan its gateways run (for a bug report). Looked up only
    when asked: every command's start pays for what it imports."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, help="print vnetlab's and strongSwan's versions and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        import subprocess
        from importlib.metadata import version

        from .gateways import CHARON

        try:  # "Linux strongSwan 5.9.8"
            swan = subprocess.run([str(CHARON), "--version"], capture_output=True, text=True, timeout=10).stdout.split()
        except OSError:
            swan = []
        print(f"vnetlab {version('vnetlab')}, strongSwan {swan[-1] if swan else 'not installed'}, "
              f"Python {sys.version.split()[0]}")
        parser.exit()


class _NotChosen:
    """The parser `build_parser` gives for a command that is not the one asked for: each of its
    methods (add_argument, add_mutually_exclusive_group, set_defaults) does nothing and returns it."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: self


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """chosen: the command on the command line; then only its parser is built. argparse builds
    each with its help texts looked up in the locale's catalogues: 10 ms for all 25, which every
    command's start paid. None (no command given, or --help): all of them."""
    parser = argparse.ArgumentParser(
        prog="vnetlab", description=PKG_DOC, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(name: str, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
        if chosen is not None and name != chosen:
            return _NotChosen()  # type: ignore[return-value]
        return sub.add_parser(name, help=help_text, description=description or help_text,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = cmd("validate", "check a plan against the classic platform's rules",
            "Check a plan: syntax, addresses, and the rules the classic platform enforced (overlaps, "
            "GatewaySubnet size, tunnels per SKU, routing type, mirrors, keys). Lists every problem at once.")
    _plan_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable result on stdout")

    p = cmd("render", "write the strongSwan configs a plan yields",
            "Write, per gateway and emulated on-premises device, strongswan.conf, swanctl.conf and "
            "secrets.conf (mode 0600) into DIR/<gateway>/.")
    _plan_arg(p)
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    p.add_argument("--dataplane", choices=["kernel", "libipsec"], default="kernel",
                   help="which IPsec data plane the daemon settings load (default: kernel)")

    p = cmd("import-netcfg", "turn a classic netcfg XML file into a plan",
            "Read a classic NetworkConfiguration XML file (Get-AzureVNetConfig -ExportToFile) and write a "
            "plan. netcfg holds no gateway type, SKU or shared keys: the type and SKU come from the options, "
            "keys are set later (vnetlab set-key). Real gateway addresses become 'auto'.")
    p.add_argument("file", metavar="FILE.xml")
    p.add_argument("-o", "--output", metavar="PLAN.yaml", help="write the plan here (default: stdout)")
    p.add_argument("--gateway-type", choices=[t.value for t in GatewayType], default="DynamicRouting",
                   help="gateway type for every VNet with a gateway (default: DynamicRouting)")
    p.add_argument("--sku", choices=[s.value for s in Sku], default="Standard",
                   help="gateway SKU (default: Standard)")

    p = cmd("export-netcfg", "write a plan as classic netcfg XML",
            "Write the plan as NetworkConfiguration XML, as Set-AzureVNetConfig takes it. 'auto' gateway "
            "addresses become the lab's emulated addresses; shared keys are not part of netcfg.")
    _plan_arg(p)
    p.add_argument("-o", "--output", metavar="FILE.xml", help="write here (default: stdout)")

    p = cmd("graph", "draw a plan, or a running lab with its tunnels' states",
            "Draw VNets (address spaces, locations), on-premises sites, gateways (SKU, emulated public address) "
            "and tunnels (local sites, IKE version). With --name, the running lab: tunnels coloured by state "
            "(green Connected, orange Connecting, red NotConnected) and labelled with bytes.")
    _plan_arg(p)
    p.add_argument("--name", metavar="LAB", help="draw this running lab instead of a plan file")
    p.add_argument("-o", "--output", required=True, metavar="FILE.svg|FILE.png")

    p = cmd("up", "build a lab from a plan and bring its tunnels up (root)",
            "Create the namespaces, links and strongSwan gateways of a plan, load connections and keys over "
            "vici, and wait until every keyed connection is Connected. Exit 0 when all are, 1 otherwise.")
    _plan_arg(p)
    p.add_argument("--name", metavar="LAB", help="lab name (default: the plan's 'lab:')")
    p.add_argument("--dataplane", choices=["auto", "kernel", "libipsec"], default="auto",
                   help="IPsec data plane: kernel XFRM, or strongSwan's userspace libipsec; auto probes "
                        "whether this kernel can do ESP (default: auto)")
    p.add_argument("--timeout", type=_seconds(0.5, 600), default=20.0, metavar="S",
                   help="wait at most S seconds for the tunnels, 0.5-600 (default: 20)")
    p.add_argument("--reuse", action="store_true",
                   help="if the lab already runs, built from this same plan, use it instead of failing")
    p.add_argument("--keep-on-error", action="store_true", help="leave a half-built lab for inspection")
    p.add_argument("--no-sku-limit", action="store_true",
                   help="do not emulate the gateway SKU's bandwidth (100 Mbit/s Basic/Standard, 200 HighPerformance)")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(netlink=None)  # the netlink worker entry.py started for it, if any

    p = cmd("status", "connection state of every gateway, like Get-AzureVNetConnection",
            "Per gateway and connection: ConnectivityState (Connected, Connecting, NotConnected), bytes in "
            "and out, when it was last established, IKE version and the data plane, read from the gateways "
            "over vici. A connection that is not Connected says why.")
    _name_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-v", "--verbose", action="store_true", help="show the evidence behind each reason")

    p = cmd("nodes", "the lab's nodes: what 'exec' can enter, their roles and addresses",
            "List every node of the lab (VNet routers and gateways, test hosts, on-premises devices, the "
            "backbone) with its address and namespace, and commands worth trying on this lab.")
    _name_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = cmd("exec", "run a command inside a lab node's namespace",
            "Run COMMAND in a node: a VNet name for its router and gateway (TestVNet1), VNET/SUBNET for a "
            "subnet's test host (TestVNet1/default), 'backbone', or an on-premises site's name.")
    _name_arg(p)
    p.add_argument("node", metavar="NODE")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")

    def dry_run(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dry-run", action="store_true",
                       help="print the actions this would run on the lab, and change nothing")

    def vnet_site(p: argparse.ArgumentParser, site: bool = True) -> None:
        _name_arg(p)
        p.add_argument("--vnet", required=True, metavar="VNET", help="the VNet (its gateway)")
        if site:
            p.add_argument("--site", required=True, metavar="SITE", help="the local network site it connects to")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    p = cmd("set-key", "set a connection's shared key on one side (Set-AzureVNetGatewayKey)",
            "Set the pre-shared key of VNET's connection to SITE, on that side only; it is reloaded into the "
            "running gateway and the connection re-initiated at once. Like the cmdlet, it reports "
            "'Status: Successful' even when the key differs from the peer's: then the connection fails, "
            "and 'vnetlab connection' says why.")
    vnet_site(p)
    p.add_argument("--key", metavar="KEY",
                   help="1-128 letters and digits (never printed back). Visible to other users in 'ps' while it "
                        "runs: without --key the key is read from $VNETLAB_SHARED_KEY, else asked for at a "
                        "terminal, else read from the first line of standard input")
    dry_run(p)

    p = cmd("get-key", "print a connection's shared key (Get-AzureVNetGatewayKey)",
            "Print the pre-shared key of VNET's connection to SITE. The only command that prints a key.")
    vnet_site(p)

    p = cmd("gateway", "a VNet gateway's state, VIP, type, SKU (Get-AzureVNetGateway)",
            "State, VIPAddress (the emulated public address), GatewayType, GatewaySKU, data plane and the "
            "gateway's last event. A VNet without a gateway is a 404, as in Azure.")
    vnet_site(p, site=False)

    p = cmd("update-site", "change a local site's VPN gateway address (walkthrough: Update local sites)",
            "Replace a local network site's gateway address, e.g. the walkthrough's dummy 5.4.3.2 by the peer "
            "gateway's VIP (see 'vnetlab gateway') or 'auto'. Every connection to that site is reloaded and "
            "re-initiated at once.")
    _name_arg(p)
    p.add_argument("--site", required=True, metavar="SITE")
    p.add_argument("--gateway-ip", required=True, metavar="IP|auto")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    dry_run(p)

    p = cmd("connection", "per local site state, bytes and last event (Get-AzureVNetConnection)",
            "For each local network site of VNET: ConnectivityState, Egress/IngressBytesTransferred, "
            "LastConnectionEstablished, LastEventID/Message/TimeStamp (from the gateway's own vici events) "
            "and, when not Connected, why. --verbose shows the daemons' log lines behind the reason.")
    vnet_site(p, site=False)
    p.add_argument("-v", "--verbose", action="store_true", help="show the evidence (log lines, keys masked)")

    for verb, flag in (("disconnect", "-Disconnect"), ("connect", "-Connect")):
        p = cmd(verb, f"{verb} a VNet's connection to a site (Set-AzureVNetGateway {flag})",
                f"Set-AzureVNetGateway {flag}: {'drop the tunnel and keep it down' if verb == 'disconnect' else 'load the connection again and initiate it'} on VNET's side.")
        vnet_site(p)
        dry_run(p)

    p = cmd("reset-gateway", "restart a VNet gateway's daemon, and measure the outage (Reset-AzureVNetGateway)",
            "Reset-AzureVNetGateway: stop VNET's gateway daemon and bring it back with the same configuration "
            "(started, keys and connections loaded, tunnels initiated), then wait until its tunnels are Connected "
            "again and report the outage in seconds. Recorded as an event that 'connection' and 'gateway' show.")
    vnet_site(p, site=False)
    dry_run(p)

    def device(p: argparse.ArgumentParser) -> None:
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("--vnet", metavar="VNET", help="the VNet's gateway")
        which.add_argument("--site", metavar="SITE", help="an on-premises site's VPN device")

    p = cmd("link", "take a gateway's backbone link down, or bring it back (a link failure on demand)",
            "Set the backbone link of VNET's gateway, or of SITE's on-premises VPN device, down or up. Down: "
            "the kernel drops the routes through it, the tunnels stop carrying traffic, and 'status' says "
            "NotConnected with the link named; the peer notices by its dead-peer detection. Up: the routes "
            "are put back and the tunnels carry traffic again. 'down' of the lab removes it all either way.")
    _name_arg(p)
    p.add_argument("state", choices=["down", "up"])
    device(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    dry_run(p)

    p = cmd("impair", "impair a gateway's backbone path: MTU, loss, delay, a firewall's drops",
            "Set the conditions of the backbone link of VNET's gateway (or SITE's on-premises VPN device) while "
            "the lab runs, as the plan's 'backbone:' section does at 'up': the MTU, random loss (percent, each "
            "direction), delay and jitter (they need the kernel's netem: refused with exit 3 where it is "
            "missing), and what a firewall on the path drops: ike (UDP 500), natt (UDP 4500), esp (IP protocol "
            "50). Given fields replace the current ones; --clear makes the link clean. 'status' and 'gateway' "
            "show the conditions; 'down' removes them with the lab.")
    _name_arg(p)
    device(p)
    p.add_argument("--mtu", type=int, metavar="N", help="the link's MTU, 576-9000")
    p.add_argument("--loss", type=float, metavar="P", help="percent of packets dropped, each direction, 0-100")
    p.add_argument("--delay", type=int, metavar="MS", help="added delay in milliseconds (needs netem)")
    p.add_argument("--jitter", type=int, metavar="MS", help="variation of the delay (needs netem)")
    p.add_argument("--block", metavar="ike,natt,esp", help="what a firewall on the path drops; '' for nothing")
    p.add_argument("--clear", action="store_true", help="remove every condition: a clean link")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    dry_run(p)

    p = cmd("clamp", "clamp the TCP MSS a VNet's gateway forwards (the remedy for a small path MTU)",
            "Rewrite the MSS option of every TCP handshake VNET's gateway forwards, either way, to at most N "
            "bytes, as the plan's gateway.tcp_mss_clamp does at 'up'. Azure asks VPN devices to clamp at 1350 "
            "where the path carries 1500-byte packets; 'verify' measures each tunnel's path MTU and says which "
            "clamp it needs (path MTU - 40). --off stops clamping.")
    _name_arg(p)
    p.add_argument("--vnet", metavar="VNET", required=True, help="the VNet whose gateway clamps")
    p.add_argument("--mss", type=int, metavar="N", help="the largest MSS let through, 536-1460")
    p.add_argument("--off", action="store_true", help="stop clamping")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    dry_run(p)

    p = cmd("demo", "narrated, scripted demonstrations on their own lab",
            "psk-mismatch: keys alike -> Connected and probes pass; one side re-keyed -> NotConnected, the "
            "cause named, probes fail, nothing in clear; key restored -> Connected again. walkthrough: the "
            "classic article step by step, from the dummy 5.4.3.2 to verified tunnels. dead-peer: a firewall "
            "drops IKE, NAT-T and ESP on one path -> NotConnected within the DPD timeout, fault PeerReachability; "
            "cleared -> Connected again by itself. mtu: a small MTU on one path that nothing reports -> pings "
            "pass, TCP stalls, verify names the black hole; an MSS clamp on a gateway -> TCP runs. nat: an "
            "on-premises device behind a NAT -> NAT-T detected, only UDP 4500 from the NAT's address on the wire. "
            "Exit 0 only when every "
            "observation matched its expectation. The demo removes its lab at the end.")
    p.add_argument("scenario", choices=["psk-mismatch", "walkthrough", "dead-peer", "mtu", "nat"])
    p.add_argument("--ike", type=int, choices=[1, 2], default=2,
                   help="IKE version of every connection (default 2); the demo checks that this version ran")
    p.add_argument("--name", metavar="LAB", help="name of the demo's lab (default: demo-<scenario>)")

    p = cmd("verify", "prove with packets that the lab does what the plan says",
            "Probe the running lab with scapy: reachability between every pair of networks the plan "
            "connects (every address space, both directions, ICMP/TCP/UDP with a nonce), isolation of every "
            "pair it does not, and a backbone capture that must hold only IKE and ESP. With --throughput, "
            "iperf3 through each connection and over a bare backbone veth. Exit 0 when every check passes, "
            "1 when one fails, 3 when the lab is not running.")
    _name_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    p.add_argument("--junit", metavar="FILE", help="also write the checks as JUnit XML")
    p.add_argument("--pcap", metavar="DIR", help="write the backbone capture, one pcap file per gateway (GATEWAY.pcap), and "
                   "Wireshark's key tables in DIR/wireshark/ to decrypt it")
    p.add_argument("--throughput", action="store_true", help="also measure TCP throughput with iperf3")
    p.add_argument("--duration", type=float, default=3.0, metavar="S",
                   help="seconds per throughput measurement and direction (default: 3)")

    def gateway_choice(p: argparse.ArgumentParser) -> None:
        _name_arg(p)
        which = p.add_mutually_exclusive_group()
        which.add_argument("--vnet", metavar="VNET", help="only this VNet's gateway")
        which.add_argument("--site", metavar="SITE", help="only this on-premises site's VPN device")

    p = cmd("capture", "record the gateways' backbone links, with the keys to decrypt them",
            "Capture each chosen gateway's link to the backbone into DIR/GATEWAY.pcap (everything: IKE, "
            "ESP, ICMP), until Ctrl-C or --duration. Then write Wireshark's key tables for every IKE and ESP "
            "SA the gateways negotiated, rekeys included, into DIR/wireshark/ (files of mode 0600: session "
            "keys of this lab, never its pre-shared keys), and print how to open the pcaps decrypted: the "
            "preference files to copy, and a tshark command line.")
    gateway_choice(p)
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="directory for the pcaps and tables")
    p.add_argument("--duration", type=_seconds(0.1, 86400), metavar="S",
                   help="stop after S seconds (default: run until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="machine-readable summary on stdout")

    p = cmd("trace", "the IKE conversation of a lab, decrypted, one line per message",
            "Read what crossed the backbone since 'up' (the lab records every IKE message), decode it and "
            "decrypt IKEv2's encrypted payloads with the gateways' session keys. One line per message: time, "
            "sender -> receiver, exchange (IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA, INFORMATIONAL; IKEv1 Main, "
            "Aggressive and Quick Mode), request or response, message ID, and the payloads: proposals, KE "
            "group, NAT detection, IDs, traffic selectors, notifies such as AUTHENTICATION_FAILED or "
            "TS_UNACCEPTABLE, deletes; an empty INFORMATIONAL is a liveness check (DPD). No key is printed.")
    gateway_choice(p)
    p.add_argument("--json", action="store_true", help="one JSON object per message (JSON lines)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new messages until Ctrl-C")

    p = cmd("down", "remove a lab: every namespace, process and file it created",
            "Remove exactly what 'up' recorded: daemons (by pid), namespaces with their links, and the "
            "lab's state directory. Safe to run twice, and after an interrupted 'up'.")
    _name_arg(p)
    p.add_argument("--all", action="store_true", help="remove every lab on this machine")
    return parser


def _command_in(argv: list[str]) -> str | None:
    """The command a command line names, if it begins with one (options before it are vnetlab's own)."""
    return argv[0] if argv and argv[0] in HANDLERS else None


def main(argv: list[str] | None = None, netlink: NetlinkWorker | None = None) -> int:
    """netlink: `up`'s netlink worker, if the caller started it (entry.py)."""
    try:
        args = build_parser(_command_in(sys.argv[1:] if argv is None else argv)).parse_args(argv)
    except KeyboardInterrupt:
        print("vnetlab: interrupted", file=sys.stderr)
        return 130
    if netlink is not None:
        args.netlink = netlink
    try:
        return int(HANDLERS[args.command](args))
    except PlanError as exc:
        if getattr(args, "json", False):
            print_json({"valid": False, "problems": [p.as_dict() for p in exc.problems]})
        print_problems(exc.problems)
        n = len([p for p in exc.problems if p.severity == "error"])
        print(f"{n} error{'s' if n != 1 else ''}; nothing was created.", file=sys.stderr)
        return exc.exit_code
    except VnetlabError as exc:
        print(f"vnetlab {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"vnetlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return ExitCode.OK
    except Exception as exc:
        if not interrupts.interrupted():
            raise
        # raised while unwinding from the user's Ctrl-C: a consequence of it, named, not a traceback
        print(f"vnetlab {args.command}: interrupted (while stopping: {type(exc).__name__}: {exc})", file=sys.stderr)
        return 130


def _validate(args: argparse.Namespace) -> int:
    from .plan import load_plan

    plan, warnings = load_plan(args.plan)
    summary = plan_summary(plan)
    if args.json:
        print_json({"valid": True, **summary, "problems": [w.as_dict() for w in warnings]})
    else:
        print_plan_summary(summary)
    print_problems(warnings)
    return ExitCode.OK


def _render(args: argparse.Namespace) -> int:
    from .plan import load_plan
    from .render import render_topology, write_rendered
    from .topology import build_topology

    plan, warnings = load_plan(args.plan)
    print_problems(warnings)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a directory")
    rendered = render_topology(build_topology(plan), out, args.dataplane)
    try:
        write_rendered(rendered)
    except OSError as exc:
        raise UsageError(f"{out}: cannot write the configs: {exc.strerror or exc}") from None
    for r in rendered:
        print(f"{r.directory}/  ({r.gateway.kind} gateway {r.gateway.name}, {len(r.gateway.tunnels)} tunnel(s))")
    return ExitCode.OK


def _import(args: argparse.Namespace) -> int:
    import yaml

    from .netcfg import import_netcfg

    from .inputfile import decode, read_capped

    path = Path(args.file)
    text = decode(read_capped(path, "netcfg file"), path, "netcfg file")
    data, plan, warnings = import_netcfg(text, str(path), args.gateway_type, args.sku)
    print_problems(warnings)
    header = (f"# Imported by vnetlab from {path.name}. netcfg holds no gateway type, SKU or keys:\n"
              f"# gateways are {args.gateway_type}/{args.sku}; set keys with vnetlab set-key or below.\n")
    body = header + yaml.safe_dump({"lab": _lab_name(path.stem), **data}, sort_keys=False, width=100)
    if args.output:
        write_output(Path(args.output), body)
        print(f"wrote {args.output}: {len(plan.vnets)} VNet(s), {len(plan.local_sites)} local site(s), "
              f"{len(plan.connections)} connection(s)", file=sys.stderr)
    else:
        sys.stdout.write(body)
    return ExitCode.OK


def _lab_name(stem: str) -> str:
    import re

    name = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")[:32].strip("-")
    return name or "imported"


def _export(args: argparse.Namespace) -> int:
    from .netcfg import export_netcfg, lab_only
    from .plan import load_plan

    plan, warnings = load_plan(args.plan)
    print_problems(warnings)
    left = lab_only(plan)
    if left:
        print(f"note: netcfg has no place for {', '.join(left)}: not exported", file=sys.stderr)
    xml = export_netcfg(plan)
    if args.output:
        write_output(Path(args.output), xml)
    else:
        sys.stdout.write(xml)
    return ExitCode.OK


def _graph(args: argparse.Namespace) -> int:
    from .graph import build, render
    from .plan import load_plan

    if args.name and args.plan:
        raise UsageError("give a PLAN or --name LAB, not both")
    if args.name:
        from .lab import open_lab
        from .status import collect

        lab = open_lab(args.name)
        graph = build(lab.plan, collect(lab))
    else:
        plan, warnings = load_plan(args.plan)
        print_problems(warnings)
        graph = build(plan)
    print(render(graph, Path(args.output)))
    return ExitCode.OK


def _lab_command(name: str):
    def run(args: argparse.Namespace) -> int:
        with importing():
            from . import commands

        return getattr(commands, name)(args)

    return run


HANDLERS = {
    "validate": _validate,
    "render": _render,
    "import-netcfg": _import,
    "export-netcfg": _export,
    "graph": _graph,
    "up": _lab_command("up"),
    "status": _lab_command("status"),
    "exec": _lab_command("exec_"),
    "nodes": _lab_command("nodes"),
    "down": _lab_command("down"),
    "verify": _lab_command("verify"),
    "set-key": _lab_command("set_key"),
    "get-key": _lab_command("get_key"),
    "gateway": _lab_command("gateway"),
    "update-site": _lab_command("update_site"),
    "connection": _lab_command("connection"),
    "disconnect": _lab_command("disconnect"),
    "connect": _lab_command("connect"),
    "reset-gateway": _lab_command("reset_gateway"),
    "link": _lab_command("link"),
    "impair": _lab_command("impair"),
    "clamp": _lab_command("clamp"),
    "demo": _lab_command("demo"),
    "capture": _lab_command("capture"),
    "trace": _lab_command("trace"),
}
