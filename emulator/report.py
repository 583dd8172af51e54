"""Turning plans and lab state into what a person or a script reads. No side effects but printing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from .model import Plan
from .problems import Problem, UsageError
from .topology import build_topology


def write_output(path: Path, data: str | bytes) -> Path:
    """Write a file the user asked for with -o/--junit: parent directories are created, and a
    path that cannot be written is a clear error (exit 2), not a traceback."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot write: {exc.strerror or exc}") from None
    return path


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def print_problems(problems: Iterable[Problem]) -> None:
    for p in problems:
        print(p, file=sys.stderr)


def plan_summary(plan: Plan) -> dict[str, Any]:
    topo = build_topology(plan)
    vip = {g.name: str(g.public_ip) for g in topo.gateways}
    return {
        "lab": plan.name,
        "source": plan.source,
        "vnets": [{"name": v.name, "location": v.location, "address_space": [str(n) for n in v.address_space],
                   "subnets": {s.name: str(s.prefix) for s in v.subnets},
                   "gateway_subnet": str(v.gateway_subnet) if v.gateway_subnet else None,
                   "gateway_type": v.gateway.type.value if v.gateway else None,
                   "gateway_sku": v.gateway.sku.value if v.gateway else None,
                   "emulated_vip": vip.get(v.name)} for v in plan.vnets],
        "local_sites": [{"name": s.name, "address_space": [str(n) for n in s.address_space],
                         "gateway_ip": str(s.gateway_ip) if s.gateway_ip else "auto",
                         "stands_for": (plan.vnet_of_site(s).name if plan.vnet_of_site(s) else "on-premises")}
                        for s in plan.local_sites],
        "connections": [{"vnet": c.vnet, "local_site": c.local_site, "ike_version": c.ike_version,
                         "suite": c.ipsec.suite, "shared_key_set": c.shared_key is not None}
                        for c in plan.connections],
    }


def print_plan_summary(summary: dict[str, Any]) -> None:
    print(f"plan '{summary['lab']}' ({summary['source']}) is valid")
    print()
    print(table(["VNet", "location", "address space", "gateway", "emulated VIP"],
                [[v["name"], v["location"], ", ".join(v["address_space"]),
                  f"{v['gateway_type']}/{v['gateway_sku']}" if v["gateway_type"] else "none",
                  v["emulated_vip"] or "-"] for v in summary["vnets"]]))
    if summary["local_sites"]:
        print()
        print(table(["local site", "address space", "gateway_ip", "stands for"],
                    [[s["name"], ", ".join(s["address_space"]), s["gateway_ip"], s["stands_for"]]
                     for s in summary["local_sites"]]))
    print()
    if summary["connections"]:
        print(table(["connection (VNet -> local site)", "IKE", "suite", "shared key"],
                    [[f"{c['vnet']} -> {c['local_site']}", f"v{c['ike_version']}", c["suite"],
                      "set" if c["shared_key_set"] else "NOT SET"] for c in summary["connections"]]))
    else:
        print("no connections")


def write_junit(path: Path, suite: str, checks) -> None:
    """Checks as JUnit XML, one testcase per check, so CI systems show each."""
    from xml.etree.ElementTree import Element, SubElement, tostring

    failures = [c for c in checks if not c.ok]
    root = Element("testsuite", {"name": f"vnetlab verify {suite}", "tests": str(len(checks)),
                                 "failures": str(len(failures))})
    for c in checks:
        name = f"{c.kind}{' ' + c.name if c.name else ''}{'/' + c.proto if c.proto else ''} {c.src} -> {c.dst}"
        case = SubElement(root, "testcase", {"classname": f"vnetlab.{c.kind}", "name": name})
        if not c.ok:
            SubElement(case, "failure", {"message": c.detail}).text = c.detail
        else:
            SubElement(case, "system-out").text = c.detail
    write_output(path, b'<?xml version="1.0" encoding="utf-8"?>\n' + tostring(root, encoding="utf-8"))
