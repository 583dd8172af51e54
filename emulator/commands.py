"""CLI handlers for the commands that act on a running lab (up, status, exec, down)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from . import interrupts, lab as labmod
from .problems import ExitCode, UsageError
from .report import print_json, print_problems, table
from .executor import read_snapshot
from .status import ConnectionStatus, collect, expected_up


def print_status(lab: labmod.Lab, rows: list[ConnectionStatus], links_down: set[str], as_json: bool,
                 verbose: bool = False) -> None:
    """links_down: the set the rows were collected with (one look at the links per command)."""
    applied = read_snapshot(lab.directory)  # what runs, as the executor recorded it
    paths = {g.name: applied.paths[g.netns].describe() for g in lab.topology.gateways if g.netns in applied.paths}
    down = sorted(links_down)
    if as_json:
        print_json({"lab": lab.name, "dataplane": lab.dataplane, "created": lab.created,
                    "backbone_paths": paths, "links_down": down, "connections": [r.as_dict() for r in rows]})
        return
    print(f"lab '{lab.name}' · data plane: {lab.dataplane} · state: {lab.directory}")
    print(table(["gateway", "local site", "state", "IKE", "in bytes", "out bytes", "established", "fault", "reason"],
                [[*_ends(lab, r), r.connectivity_state, f"v{r.ike_version}", r.ingress_bytes, r.egress_bytes,
                  r.last_connection_established or "-", r.fault["type"] if r.fault else "", r.reason] for r in rows]))
    for gateway, what in paths.items():
        print(f"backbone path of {gateway}: {what}")
    for gateway in down:
        print(f"backbone link of {gateway}: down")
    if verbose:
        for r in rows:
            for line in r.evidence:
                print(f"  evidence {r.label}: {line}")


def _ends(lab: labmod.Lab, r: ConnectionStatus) -> tuple[str, str]:
    """(gateway, local site) columns; an on-premises device's row names the VNet it connects to."""
    if r.gateway == r.local_site:
        return f"{r.gateway} (on-premises)", f"-> {r.vnet}"
    return r.gateway, r.local_site


def _failures(lab: labmod.Lab, rows: list[ConnectionStatus]) -> list[ConnectionStatus]:
    wanted = expected_up(lab)
    return [r for r in rows if (r.gateway, r.local_site) in wanted and r.connectivity_state != "Connected"]


def up(args: argparse.Namespace) -> int:
    result = labmod.up(args.plan, args.name, args.dataplane, args.timeout, args.keep_on_error,
                       sku_limit=not args.no_sku_limit, reuse=args.reuse, netlink=args.netlink)
    print_problems(result.warnings)
    if result.reused:
        print(f"lab '{result.lab.name}' is already running, built from this plan: reusing it "
              f"(vnetlab down --name {result.lab.name} removes it)", file=sys.stderr)
    down = result.lab.links_down(just_built=not result.reused)
    rows = collect(result.lab, links_down=down)
    print_status(result.lab, rows, down, args.json)
    failed = _failures(result.lab, rows)
    if not args.json and not result.reused:
        print(f"\nup in {result.seconds:.2f} s. Explore: vnetlab nodes · remove: vnetlab down --name "
              f"{result.lab.name}")
    for r in failed:
        print(f"not connected: {r.label}: {r.reason}", file=sys.stderr)
    return ExitCode.CHECK_FAILED if failed else ExitCode.OK


def status(args: argparse.Namespace) -> int:
    lab = labmod.open_lab(args.name)
    down = lab.links_down()
    rows = collect(lab, links_down=down)
    print_status(lab, rows, down, args.json, args.verbose)
    return ExitCode.CHECK_FAILED if _failures(lab, rows) else ExitCode.OK


def explore_hints(lab: labmod.Lab) -> list[str]:
    """Commands worth trying on this lab, with its own node names and addresses."""
    hints = []
    topo = lab.topology
    for gw in topo.gateways:
        peer = next((topo.peer_gateway(t) for t in gw.tunnels if t.peer_in_lab and topo.peer_gateway(t)), None)
        src = next((h for h in topo.hosts if h.owner == gw.name), None)
        dst = next((h for h in topo.hosts if peer and h.owner == peer.name), None)
        if src and dst:
            hints.append(f"vnetlab exec {src.node} -- ping -c 1 {dst.address}     # across the tunnel "
                         f"{gw.name} -> {peer.name}")
            break
    if topo.gateways:
        gw = topo.gateways[0]
        hints.append(f"vnetlab exec {gw.name} -- swanctl --list-sas     # strongSwan's own view of {gw.name}'s "
                     "gateway")
        hints.append(f"vnetlab exec {gw.name} -- ip route show table all")
    hints.append("vnetlab exec backbone -- tcpdump -ni any -c 10     # only IKE and ESP cross the backbone")
    name = f" --name {lab.name}" if len(labmod.list_labs()) > 1 else ""
    return [h.replace("vnetlab exec", f"vnetlab exec{name}", 1) for h in hints]


def nodes(args: argparse.Namespace) -> int:
    lab = labmod.open_lab(args.name)
    topo = lab.topology
    hosts = {h.node: h for h in topo.hosts}
    gws = {g.name: g for g in topo.gateways}
    nats = {g.nat_ns: g for g in topo.gateways if g.nat_ns}
    rows = []
    for node, ns in topo.nodes:
        if node in hosts:
            role, addr = f"test host of {hosts[node].owner} ({hosts[node].network})", str(hosts[node].address)
        elif node in gws:
            gw = gws[node]
            role = "VNet router and gateway" if gw.kind == "vnet" else "on-premises VPN device"
            addr = (f"{gw.tunnels[0].local_ip} (behind NAT)" if gw.nat_ns and gw.tunnels
                    else f"{gw.public_ip} (public)")
        elif ns in nats:
            role, addr = f"NAT in front of {nats[ns].name}'s VPN device (masquerade)", f"{nats[ns].public_ip} (public)"
        else:
            role, addr = "backbone router (the emulated Internet)", ""
        rows.append({"node": node, "role": role, "address": addr, "netns": ns})
    if args.json:
        print_json({"lab": lab.name, "nodes": rows, "try": explore_hints(lab)})
        return ExitCode.OK
    print(table(["node", "role", "address", "namespace"], [[r["node"], r["role"], r["address"], r["netns"]]
                                                            for r in rows]))
    print("\ntry:")
    for hint in explore_hints(lab):
        print(f"  {hint}")
    return ExitCode.OK


def exec_(args: argparse.Namespace) -> int:
    lab = labmod.open_lab(args.name)
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    return labmod.exec_in(lab, args.node, argv)


def down(args: argparse.Namespace) -> int:
    removed = labmod.down(args.name, args.all)
    if removed:
        print(f"removed: {', '.join(removed)}")
    else:
        print(f"nothing to remove: no lab{f' named {args.name!r}' if args.name and not args.all else ''} exists")
    return ExitCode.OK


def verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .report import write_junit
    from .verify import lab_loss, retries_for
    from .verify import verify as run_verify

    if args.duration <= 0 or args.duration > 60:
        raise UsageError("--duration must be between 0 and 60 seconds")
    restored = labmod.converge(args.name)
    for action in restored:
        print(f"(restored before verifying: {action.describe()})", file=sys.stderr)
    lab = labmod.open_lab(args.name)
    checks = run_verify(lab, Path(args.pcap) if args.pcap else None, throughput=args.throughput,
                        duration=args.duration)
    passed = all(c.ok for c in checks)
    loss = lab_loss(lab)
    retried = sum(1 for c in checks if c.attempts)
    if args.junit:
        write_junit(Path(args.junit), lab.name, checks)
    if args.json:
        print_json({"lab": lab.name, "dataplane": lab.dataplane, "passed": passed,
                    "retries": {"loss_percent": loss, "max_attempts": retries_for(loss) + 1, "retried_checks": retried},
                    "checks": [c.as_dict() for c in checks]})
    else:
        print(table(["check", "proto", "from", "to", "result", "detail"],
                    [[c.kind + (f" {c.name}" if c.name else ""), c.proto or "", c.src, c.dst, "pass" if c.ok else "FAIL",
                      (f"{c.mbps:.1f} Mbit/s; " if c.mbps is not None else "") + c.detail] for c in checks]))
        failed = [c for c in checks if not c.ok]
        if loss:
            print(f"\nloss on the backbone (up to {loss:g}%): every probe without an answer was sent again, up to "
                  f"{retries_for(loss) + 1} times in all; {retried} reach check(s) needed more than one attempt")
        print(f"\n{len(checks) - len(failed)}/{len(checks)} checks passed"
              + (f"; failed: {', '.join(sorted({c.kind for c in failed}))}" if failed else ""))
    return ExitCode.OK if passed else ExitCode.CHECK_FAILED


OPERATION_STATUS = {"Error": None, "HttpStatusCode": "OK", "Id": None, "Status": "Successful", "RequestId": None,
                    "StatusCode": "OK"}


def _block(data: dict, as_json: bool) -> None:
    """A PowerShell-style property list, or JSON."""
    if as_json:
        print_json(data)
        return
    width = max(map(len, data))
    for key, value in data.items():
        print(f"{key:<{width}} : {'' if value is None else value}")


KEY_ENV = "VNETLAB_SHARED_KEY"


def read_key(given: str | None) -> str:
    """The key from --key, else $VNETLAB_SHARED_KEY, else a prompt at a terminal, else stdin's first line:
    the last three keep it out of the process list."""
    if given is not None:
        return given
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV]
    if sys.stdin.isatty():
        return getpass.getpass("shared key (1-128 letters and digits, not echoed): ")
    line = sys.stdin.readline(256).strip()
    if not line:
        raise UsageError(f"no key given: use --key KEY, set ${KEY_ENV}, or pipe the key on standard input")
    return line


def _changed(applied, args: argparse.Namespace, status: dict = OPERATION_STATUS) -> int:
    """How every mutating command reports: the cmdlet's answer and notes, or with --dry-run the
    actions it would run (nothing changed)."""
    if applied.dry_run:
        lines = [a.describe() for a in applied.actions]
        if args.json:
            print_json({"dry_run": True, "actions": lines, "notes": applied.notes})
            return ExitCode.OK
        print(f"dry run: nothing was changed; {len(lines)} action(s) would run:")
        for line in lines or ["(none: the lab already is in that state)"]:
            print(f"  {line}")
        for note in applied.notes:
            print(f"  note: {note}")
        return ExitCode.OK
    if args.json:
        print_json({**status, "actions": len(applied.actions), "notes": applied.notes})
        return ExitCode.OK
    _block(status, False)
    for note in applied.notes:
        print(f"  {note}", file=sys.stderr)
    return ExitCode.OK


def set_key(args: argparse.Namespace) -> int:
    from .workflow import set_key as run

    return _changed(run(args.name, args.vnet, args.site, read_key(args.key), args.dry_run), args)


def get_key(args: argparse.Namespace) -> int:
    from .workflow import get_key as run

    _block({"Value": run(args.name, args.vnet, args.site)}, args.json)
    return ExitCode.OK


def gateway(args: argparse.Namespace) -> int:
    from .workflow import gateway as run

    _block(run(args.name, args.vnet), args.json)
    return ExitCode.OK


def update_site(args: argparse.Namespace) -> int:
    from .workflow import update_site as run

    return _changed(run(args.name, args.site, args.gateway_ip, args.dry_run), args)


def connection(args: argparse.Namespace) -> int:
    from .workflow import connection as run

    _lab, reports = run(args.name, args.vnet)
    entries = [r.as_dict() for r in reports]
    if not args.verbose:
        for e in entries:
            e.pop("Evidence")
    if args.json:
        print_json(entries)
    else:
        for i, e in enumerate(entries):
            if i:
                print()
            evidence = e.pop("Evidence", [])
            fault = e.pop("Fault")
            _block({**e, "Fault": fault["type"] if fault else None}, False)
            for action in fault["recommended_actions"] if fault else []:
                print(f"  recommended: {action}")
            for line in evidence:
                print(f"  evidence: {line}")
    return ExitCode.OK if all(r.status.connectivity_state == "Connected" for r in reports) else ExitCode.CHECK_FAILED


def disconnect(args: argparse.Namespace) -> int:
    from .workflow import set_connected

    return _changed(set_connected(args.name, args.vnet, args.site, False, args.dry_run), args)


def connect(args: argparse.Namespace) -> int:
    from .workflow import set_connected

    return _changed(set_connected(args.name, args.vnet, args.site, True, args.dry_run), args)


def link(args: argparse.Namespace) -> int:
    from .workflow import set_link

    return _changed(set_link(args.name, args.vnet, args.site, args.state == "up", args.dry_run), args)


def impair(args: argparse.Namespace) -> int:
    from .workflow import impair as run

    fields = {k: v for k, v in (("mtu", args.mtu), ("loss", args.loss), ("delay_ms", args.delay),
                                ("jitter_ms", args.jitter)) if v is not None}
    if args.block is not None:
        fields["block"] = [b.strip() for b in args.block.split(",") if b.strip()]
    if args.clear and fields:
        raise UsageError("--clear makes the link clean: give it alone, or give the conditions to set")
    if not args.clear and not fields:
        raise UsageError("give at least one of --mtu, --loss, --delay, --block, or --clear")
    return _changed(run(args.name, args.vnet, args.site, fields, args.clear, args.dry_run), args)


def clamp(args: argparse.Namespace) -> int:
    from .workflow import clamp as run

    if (args.mss is None) == (not args.off):
        raise UsageError("give --mss N, or --off")
    return _changed(run(args.name, args.vnet, args.mss, args.dry_run), args)


def reset_gateway(args: argparse.Namespace) -> int:
    from .workflow import reset_gateway as run

    applied, outage = run(args.name, args.vnet, args.dry_run)
    return _changed(applied, args, {**OPERATION_STATUS, **outage})


def demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(args.scenario, args.name or f"demo-{args.scenario}", args.ike)


def capture(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .capture import capture as run_capture, choose_gateways
    from .keytables import how_to_open, tshark_options

    lab = labmod.open_lab(args.name)
    chosen = choose_gateways(lab, args.vnet, args.site)
    until = f"for {args.duration:g} s" if args.duration else "until Ctrl-C"

    def listening() -> None:  # said once every link is captured (also with --json: scripts wait for it)
        print(f"capturing {', '.join(g.name for g in chosen)} {until} …", file=sys.stderr, flush=True)

    result = run_capture(lab, chosen, Path(args.output), args.duration, listening)
    kt = result.tables
    if args.json:
        print_json({"lab": lab.name, "seconds": round(result.seconds, 3), "pcaps": [str(p) for p in result.pcaps],
                    "wireshark_dir": str(result.wireshark_dir), "ikev2_sas": len(kt.ikev2_decryption_table),
                    "ikev1_sas": len(kt.ikev1_decryption_table), "esp_sas": len(kt.esp_sa),
                    "tshark": ["tshark", "-r", str(result.pcaps[0]), *tshark_options(kt)]})
        return ExitCode.OK
    print(f"captured {result.seconds:.1f} s:")
    for p in result.pcaps:
        print(f"  {p}  ({p.stat().st_size if p.exists() else 0} bytes)")
    print(f"key tables (session keys, mode 0600): {result.wireshark_dir}/  {len(kt.ikev2_decryption_table)} IKEv2 "
          f"SA(s), {len(kt.ikev1_decryption_table)} IKEv1 SA(s), {len(kt.esp_sa)} ESP SA(s)")
    for line in how_to_open(kt, result.wireshark_dir, result.pcaps):
        print(line)
    return ExitCode.OK


def trace(args: argparse.Namespace) -> int:
    import json
    from .capture import choose_gateways, recorded_messages

    lab = labmod.open_lab(args.name)
    chosen = choose_gateways(lab, args.vnet, args.site)
    only = {str(g.public_ip) for g in chosen} if (args.vnet or args.site) else None
    if not args.json:
        print(f"lab '{lab.name}': IKE messages on the backbone since up"
              + (f", to or from {', '.join(g.name for g in chosen)}" if only else ""))
    shown = 0
    with interrupts.sigterm_too():
        try:
            for msg in recorded_messages(lab, follow=args.follow):
                if only and msg.src not in only and msg.dst not in only:
                    continue
                shown += 1
                print(json.dumps(msg.as_dict()) if args.json else msg.line(), flush=args.follow)
        except KeyboardInterrupt:
            pass  # the way to end --follow
    if not shown and not args.json:
        print("no IKE messages recorded")
    return ExitCode.OK
