"""Classic NetworkConfiguration XML (netcfg) ⇄ plan.

Import reads with defusedxml (no entities, no DTDs), builds the plan's YAML structure and runs
it through the same parser and rules as a hand-written plan, so a netcfg file is held to the
same classic rules. What netcfg does not hold gets stated defaults (gateway type and SKU) and
no shared keys. Real public gateway addresses are never lab addresses: a local site that
mirrors a VNet becomes `gateway_ip: auto`; an on-premises device is emulated in the lab anyway.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address
from typing import Any
from xml.etree.ElementTree import Element, SubElement, indent, tostring

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from .inputfile import MAX_INPUT_BYTES
from .model import Plan
from .plan import NAME_RE, parse_plan_data
from .problems import Collector, PlanError, Problem, connection_label
from .topology import build_topology

NS = "http://schemas.microsoft.com/ServiceHosting/2011/07/NetworkConfiguration"


def _strip_ns(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(el: Element | None, name: str) -> list[Element]:
    return [c for c in el if _strip_ns(c.tag) == name] if el is not None else []


def _child(el: Element | None, name: str) -> Element | None:
    found = _children(el, name)
    return found[0] if found else None


def _prefixes(container: Element | None, out: Collector, obj: str) -> list[str]:
    """AddressPrefix texts, with leading zeros in octets dropped (real files write 192.168.0.032/29)."""
    result = [re.sub(r"\b0+(\d)", r"\1", (p.text or "").strip()) for p in _children(container, "AddressPrefix")]
    if not result:
        out.error(obj, "AddressPrefix", "missing: give one or more prefixes")
    return result


def _line_of(text: str, tag: str, name: str | None, seen: dict[tuple[str, str], int]) -> int | None:
    """The line of the next element <tag name="name"> (a name may repeat): ElementTree keeps no
    positions, the text does."""
    key = (tag, name or "")
    nth = seen[key] = seen.get(key, -1) + 1
    found = list(re.finditer(rf"<(?:\w+:)?{tag}\b[^>]*?\bname\s*=\s*[\"']{re.escape(name or '')}[\"']", text))
    return text.count("\n", 0, found[nth].start()) + 1 if nth < len(found) else None


def _safe_name(raw: str | None, out: Collector, obj: str, renames: dict[str, str]) -> str:
    raw = (raw or "").strip()
    if NAME_RE.match(raw):
        return raw
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", raw).strip("-")[:64] or "unnamed"
    if raw not in renames:
        out.warning(obj, "name", f"'{raw}' cannot be a lab identifier (letters, digits, '-', '_'); "
                    f"imported as '{name}'")
    renames[raw] = name
    return name


def import_netcfg(text: str, source: str, gateway_type: str = "DynamicRouting", sku: str = "Standard"
                  ) -> tuple[dict[str, Any], Plan, list[Problem]]:
    """(plan as YAML-ready dict, validated plan, warnings); raises PlanError on a bad file. Every
    problem names the line of the XML element it comes from."""
    out = Collector(source)
    if len(text) > MAX_INPUT_BYTES:  # files are capped when read; this holds for callers with text, too
        out.error("NetworkConfiguration", "", f"larger than {MAX_INPUT_BYTES:,} characters; refused")
        out.raise_if_errors()
    try:
        root = SafeET.fromstring(text)
    except DefusedXmlException as exc:
        out.error("NetworkConfiguration", "", f"refused: {type(exc).__name__} (DTDs and entities are not allowed "
                  "in a netcfg file)")
        raise PlanError(out.problems) from None
    except SafeET.ParseError as exc:
        out.error("NetworkConfiguration", "", f"malformed XML: {exc}", exc.position[0] if exc.position else None)
        raise PlanError(out.problems) from None
    ns = root.tag[1:].split("}")[0] if root.tag.startswith("{") else ""
    if _strip_ns(root.tag) != "NetworkConfiguration":
        out.error(_strip_ns(root.tag), "", "not a netcfg file: the root element must be NetworkConfiguration")
        out.raise_if_errors()
    if re.sub(r"\s+", "", ns) != NS:
        out.error("NetworkConfiguration", "xmlns", f"unexpected namespace {ns!r}; expected {NS}")
        out.raise_if_errors()
    vnc = _child(root, "VirtualNetworkConfiguration")
    renames: dict[str, str] = {}
    seen: dict[tuple[str, str], int] = {}
    dns = {d.get("name"): d.get("IPAddress") for d in _children(_child(_child(vnc, "Dns"), "DnsServers"), "DnsServer")}

    sites: dict[str, Any] = {}
    for el in _children(_child(vnc, "LocalNetworkSites"), "LocalNetworkSite"):
        name, obj, line = _element(text, el, "LocalNetworkSite", "local_sites", out, renames, sites, seen)
        if name is None:
            continue
        sites[name] = {"address_space": _prefixes(_child(el, "AddressSpace"), out, obj), "gateway_ip": "auto"}
        real = (_child(el, "VPNGatewayAddress").text or "").strip() if _child(el, "VPNGatewayAddress") is not None else ""
        if real and _ipv4(real):
            out.warning(obj, "VPNGatewayAddress", f"{real} is a real public address and is not used: the "
                        "lab gives this site's gateway an emulated address (gateway_ip: auto)")
        elif real:
            out.warning(obj, "VPNGatewayAddress", f"'{real[:60]}' is not an IPv4 address; ignored: the lab gives "
                        "this site's gateway an emulated address (gateway_ip: auto)")

    vnets: dict[str, Any] = {}
    connections: list[dict[str, Any]] = []
    for el in _children(_child(vnc, "VirtualNetworkSites"), "VirtualNetworkSite"):
        name, obj, line = _element(text, el, "VirtualNetworkSite", "vnets", out, renames, vnets, seen)
        if name is None:
            continue
        location = el.get("Location") or el.get("AffinityGroup")
        if not location:
            out.error(obj, "Location", "neither Location nor AffinityGroup is set; give one")
        elif not el.get("Location"):
            out.warning(obj, "AffinityGroup", f"affinity group '{location}' imported as the location")
        body: dict[str, Any] = {"location": location,
                                "address_space": _prefixes(_child(el, "AddressSpace"), out, obj)}
        subnets, gw_subnet = {}, None
        for sub in _children(_child(el, "Subnets"), "Subnet"):
            prefix = _prefixes(sub, out, f"{obj}.Subnet[{sub.get('name')}]")
            if sub.get("name") == "GatewaySubnet":
                gw_subnet = prefix[0] if prefix else None
            elif prefix:
                subnets[_safe_name(sub.get("name"), out, f"{obj}.Subnet", renames)] = prefix[0]
        body["subnets"] = subnets
        if gw_subnet:
            body["gateway_subnet"] = gw_subnet
        refs = [d.get("name") for d in _children(_child(el, "DnsServersRef"), "DnsServerRef")]
        if refs:
            body["dns_servers"] = {_safe_name(r, out, f"{obj}.DnsServerRef", renames): dns.get(r) for r in refs}
        gateway = _child(el, "Gateway")
        if gateway is not None:
            body["gateway"] = {"type": gateway_type, "sku": sku}
            for ref in _children(_child(gateway, "ConnectionsToLocalNetwork"), "LocalNetworkSiteRef"):
                conn = _child(ref, "Connection")
                ctype = conn.get("type", "IPsec") if conn is not None else "IPsec"
                if ctype != "IPsec":
                    out.error(obj, "Connection.type", f"'{ctype}' is not an IPsec tunnel (Dedicated is "
                              "ExpressRoute); only type=\"IPsec\" can be emulated")
                    continue
                site = renames.get(ref.get("name"), ref.get("name"))
                out.lines[(connection_label(len(connections), name, site), "")] = line or 0
                connections.append({"vnet": name, "local_site": site})
        vnets[name] = body

    out.raise_if_errors()
    data = {"vnets": vnets, "local_sites": sites, "connections": connections}
    plain = {k: v for k, v in data.items() if v}
    plan, warnings = parse_plan_data(plain, out)
    return plain, plan, warnings


def _element(text: str, el: Element, tag: str, section: str, out: Collector, renames: dict[str, str],
             taken: dict[str, Any], seen: dict[tuple[str, str], int]) -> tuple[str | None, str, int | None]:
    """(plan name or None when it repeats another, object label, XML line) of a named site element;
    problems about it, and later about the plan object it becomes, are reported at its line."""
    obj = f"{tag}[{el.get('name')}]"
    line = _line_of(text, tag, el.get("name"), seen)
    out.lines[(obj, "")] = line or 0
    name = _unique(el.get("name"), out, obj, renames, taken, line)
    if name is not None:
        out.lines[(f"{section}.{name}", "")] = line or 0
    return name, obj, line


def _unique(raw: str | None, out: Collector, obj: str, renames: dict[str, str], taken: dict[str, Any],
            line: int | None) -> str | None:
    """The cleaned name, or None (an error) when it repeats another element's name, before or after cleaning."""
    name = _safe_name(raw, out, obj, renames)
    if name in taken:
        before = next((r for r, n in renames.items() if n == name and r != raw), name)
        how = "repeats" if before == (raw or "").strip() else f"becomes '{name}', as '{before}' does, so it collides with"
        out.error(obj, "name", f"'{raw}' {how} another {obj.split('[')[0]} in this file; names must be unique, "
                  "or the two would merge silently", line)
        return None
    return name


def _ipv4(text: str) -> bool:
    try:
        IPv4Address(text)
        return True
    except ValueError:
        return False


def lab_only(plan: Plan) -> list[str]:
    """What the plan sets that netcfg has no place for (the export leaves it out)."""
    left = [f"backbone path of {g}" for g, _c in plan.backbone]
    left += [f"behind_nat of {s.name}" for s in plan.local_sites if s.behind_nat]
    left += [f"tcp_mss_clamp of {v.name}" for v in plan.vnets if v.gateway and v.gateway.tcp_mss_clamp]
    return left


def export_netcfg(plan: Plan) -> str:
    """The plan as netcfg XML. `auto` gateway addresses become the lab's emulated addresses."""
    topo = build_topology(plan)
    gw_ip = {g.name: g.public_ip for g in topo.gateways}
    root = Element("NetworkConfiguration", {"xmlns": NS})
    vnc = SubElement(root, "VirtualNetworkConfiguration")
    dns_el = SubElement(vnc, "Dns")
    servers = {name: ip for v in plan.vnets for name, ip in v.dns_servers}
    if servers:
        box = SubElement(dns_el, "DnsServers")
        for name, ip in servers.items():
            SubElement(box, "DnsServer", {"name": name, "IPAddress": str(ip)})
    if plan.local_sites:
        lns = SubElement(vnc, "LocalNetworkSites")
        for site in plan.local_sites:
            el = SubElement(lns, "LocalNetworkSite", {"name": site.name})
            _space(el, site.address_space)
            peer = plan.vnet_of_site(site)
            addr: IPv4Address | None = site.gateway_ip or (gw_ip.get(peer.name) if peer else gw_ip.get(site.name))
            if addr:
                SubElement(el, "VPNGatewayAddress").text = str(addr)
    vns = SubElement(vnc, "VirtualNetworkSites")
    for v in plan.vnets:
        el = SubElement(vns, "VirtualNetworkSite", {"name": v.name, "Location": v.location})
        _space(el, v.address_space)
        subs = SubElement(el, "Subnets")
        for s in v.subnets:
            SubElement(SubElement(subs, "Subnet", {"name": s.name}), "AddressPrefix").text = str(s.prefix)
        if v.gateway_subnet:
            SubElement(SubElement(subs, "Subnet", {"name": "GatewaySubnet"}), "AddressPrefix").text = str(
                v.gateway_subnet)
        if v.dns_servers:
            refs = SubElement(el, "DnsServersRef")
            for name, _ip in v.dns_servers:
                SubElement(refs, "DnsServerRef", {"name": name})
        if v.gateway:
            gw = SubElement(el, "Gateway")
            conns = SubElement(gw, "ConnectionsToLocalNetwork")
            for c in plan.connections:
                if c.vnet == v.name:
                    ref = SubElement(conns, "LocalNetworkSiteRef", {"name": c.local_site})
                    SubElement(ref, "Connection", {"type": "IPsec"})
    indent(root, "  ")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + tostring(root, encoding="unicode") + "\n"


def _space(parent: Element, nets: tuple) -> None:
    box = SubElement(parent, "AddressSpace")
    for n in nets:
        SubElement(box, "AddressPrefix").text = str(n)
