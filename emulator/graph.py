"""`vnetlab graph`: a picture of a plan, or of a running lab with tunnels coloured by state.

VNets (address space, location), on-premises sites, gateways (SKU, emulated public address)
and one edge per tunnel pair, labelled with the local site names, IKE version and, for a
running lab, state and bytes. Rendered by Graphviz's `dot`.
"""

from __future__ import annotations

from pathlib import Path

import graphviz

from .model import Plan
from .problems import EnvironmentProblem, UsageError
from .report import write_output
from .status import ConnectionStatus
from .topology import build_topology

COLOURS = {"Connected": "forestgreen", "Connecting": "darkorange", "NotConnected": "firebrick", None: "gray40"}
FORMATS = ("svg", "png")


def _spaces(nets) -> str:
    return "\\n".join(str(n) for n in nets)


def build(plan: Plan, statuses: list[ConnectionStatus] | None = None) -> graphviz.Graph:
    topo = build_topology(plan)
    state = {(s.gateway, s.local_site): s for s in statuses or []}
    g = graphviz.Graph("vnetlab", graph_attr={"label": f"vnetlab: {plan.name}", "labelloc": "t", "rankdir": "LR",
                                              "fontname": "Helvetica"},
                       node_attr={"fontname": "Helvetica", "fontsize": "10"}, edge_attr={"fontname": "Helvetica",
                                                                                         "fontsize": "9"})
    gateways = {gw.name: gw for gw in topo.gateways}
    for v in plan.vnets:
        gw = gateways.get(v.name)
        label = f"{v.name}\\n{v.location}\\n{_spaces(v.address_space)}"
        if gw and v.gateway:
            label += f"\\n\\ngateway {v.gateway.type.value}/{v.gateway.sku.value}\\nVIP {gw.public_ip}"
        g.node(f"vnet__{v.name}", label, shape="box", style="rounded,filled", fillcolor="lightsteelblue1")
    for s in plan.local_sites:
        if plan.vnet_of_site(s) is None and s.name in gateways:
            g.node(f"site__{s.name}", f"{s.name}\\non-premises\\n{_spaces(s.address_space)}\\n\\nVPN device "
                   f"{gateways[s.name].public_ip}", shape="box", style="filled", fillcolor="lightyellow")
    drawn: set[frozenset] = set()
    for gw in topo.gateways:
        if gw.kind != "vnet":
            continue
        for t in gw.tunnels:
            site = plan.site(t.local_site)
            peer = plan.vnet_of_site(site)
            if not t.peer_in_lab:
                target = f"addr__{t.remote_ip}"
                g.node(target, f"{t.remote_ip}\\n(no gateway here)", shape="plaintext", fontcolor="firebrick")
            else:
                target = f"vnet__{peer.name}" if peer else f"site__{site.name}"
            key = frozenset((f"vnet__{gw.name}", target))
            if key in drawn:
                continue
            drawn.add(key)
            peer_gw, peer_end = topo.peer_gateway(t), topo.peer_end(t)
            ends = [(gw.name, t)] + ([(peer_gw.name, peer_end)] if peer_end and peer_gw.kind == "vnet" else [])
            lines, states = [], []
            for name, end in ends:
                st = state.get((name, end.local_site))
                states.append(st.connectivity_state if st else None)
                lines.append(f"{name} -> {end.local_site}" + (
                    f": {st.connectivity_state}, {st.egress_bytes} B out" if st else ""))
            worst = next((s for s in ("NotConnected", "Connecting", "Connected") if s in states), None)
            g.edge(f"vnet__{gw.name}", target, label=f"IKEv{t.ike_version}\\n" + "\\n".join(lines),
                   color=COLOURS[worst], penwidth="2", style="solid" if t.shared_key else "dashed")
    return g


def render(graph: graphviz.Graph, output: Path) -> Path:
    fmt = output.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise UsageError(f"-o {output}: give a .svg or .png file")
    try:
        data = graph.pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        raise EnvironmentProblem("Graphviz's 'dot' is missing: run scripts/install.sh (Debian package graphviz)") \
            from None
    return write_output(output, data)
