"""CLI handlers for the commands that act on a running lab (up, status, exec, down)."""

from __future__ import annotations

import argparse
import sys

from . import lab as labmod
from .problems import ExitCode
from .report import print_json, print_problems, table
from .status import ConnectionStatus, collect, expected_up


def print_status(lab: labmod.Lab, rows: list[ConnectionStatus], as_json: bool) -> None:
    if as_json:
        print_json({"lab": lab.name, "dataplane": lab.dataplane, "created": lab.created,
                    "connections": [r.as_dict() for r in rows]})
        return
    print(f"lab '{lab.name}' · data plane: {lab.dataplane} · state: {lab.directory}")
    print(table(["gateway", "local site", "state", "IKE", "in bytes", "out bytes", "established", "reason"],
                [[r.gateway, r.local_site, r.connectivity_state, f"v{r.ike_version}", r.ingress_bytes,
                  r.egress_bytes, r.last_connection_established or "-", r.reason] for r in rows]))


def _failures(lab: labmod.Lab, rows: list[ConnectionStatus]) -> list[ConnectionStatus]:
    wanted = expected_up(lab)
    return [r for r in rows if (r.gateway, r.local_site) in wanted and r.connectivity_state != "Connected"]


def up(args: argparse.Namespace) -> int:
    result = labmod.up(args.plan, args.name, args.dataplane, args.timeout, args.keep_on_error)
    print_problems(result.warnings)
    rows = collect(result.lab)
    print_status(result.lab, rows, args.json)
    failed = _failures(result.lab, rows)
    if not args.json:
        print(f"\nup in {result.seconds:.2f} s. Explore: vnetlab exec --name {result.lab.name} "
              f"{result.lab.topology.hosts[0].node if result.lab.topology.hosts else 'backbone'} -- ip route · "
              f"remove: vnetlab down --name {result.lab.name}")
    for r in failed:
        print(f"not connected: {r.gateway} -> {r.local_site}: {r.reason}", file=sys.stderr)
    return ExitCode.CHECK_FAILED if failed else ExitCode.OK


def status(args: argparse.Namespace) -> int:
    lab = labmod.open_lab(args.name)
    rows = collect(lab)
    print_status(lab, rows, args.json)
    return ExitCode.CHECK_FAILED if _failures(lab, rows) else ExitCode.OK


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
