"""Plan file → validated `Plan`: field syntax here, cross-object classic rules in `rules`.

The YAML layout is the contract users write against (see README, "The plan file").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from . import configs_dir
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from pathlib import Path
from typing import Any, Callable

from .model import (
    BLOCKABLE,
    SUITES,
    Connection,
    Gateway,
    GatewayType,
    IpsecPolicy,
    LocalSite,
    PathConditions,
    Plan,
    SharedKey,
    Sku,
    Subnet,
    UserCheck,
    VNet,
    default_policy,
    dpd_delay_for,
)
from .inputfile import decode, read_capped
from .problems import UsageError, Collector, Problem, connection_label, did_you_mean
from .rules import check_plan, check_user_tests
from .yamlsource import LineMap, YamlProblem, load_yaml

# Names end up in namespace names, swanctl section names and file names: letters, digits, '-'
# and '_' only. No dots (a dot nests a strongSwan section) and no spaces.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
NAME_RULE = "1-64 letters, digits, '-' or '_', starting with a letter or digit"
LAB_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
LAB_RULE = "1-32 lowercase letters, digits or '-', starting with a letter or digit"
LOCATION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ()_-]{0,63}$")
KEY_RE = re.compile(r"^[A-Za-z0-9]{1,128}$")
PROPOSAL_TOKENS = {
    # encryption
    "aes128", "aes192", "aes256", "3des", "aes128gcm16", "aes192gcm16", "aes256gcm16",
    "aes128gcm12", "aes256gcm12", "aes128gcm8", "aes256gcm8", "chacha20poly1305",
    # integrity and PRF
    "md5", "sha1", "sha256", "sha384", "sha512",
    "prfmd5", "prfsha1", "prfsha256", "prfsha384", "prfsha512",
    # Diffie-Hellman groups (1, 2, 5, 14, 24 are the classic PFS groups)
    "modp768", "modp1024", "modp1536", "modp2048", "modp3072", "modp4096", "modp2048s256",
    "ecp256", "ecp384", "ecp521", "curve25519", "noesn", "esn",
}

TOP_KEYS = {"lab", "vnets", "local_sites", "connections", "tests", "backbone"}
PATH_KEYS = {"mtu", "loss", "delay_ms", "jitter_ms", "block"}
MTU_RANGE = (576, 9000)
TEST_KEYS = {"name", "from", "to", "proto", "port", "expect", "during"}
DURING_KEYS = {"disconnect"}
VNET_KEYS = {"location", "resource_group", "address_space", "subnets", "gateway_subnet", "gateway", "dns_servers"}
GATEWAY_KEYS = {"type", "sku", "tcp_mss_clamp"}
MSS_RANGE = (536, 1460)  # IPv4's minimum MSS, and what a 1500-byte link allows
SITE_KEYS = {"address_space", "gateway_ip", "behind_nat"}
CONN_KEYS = {"vnet", "local_site", "shared_key", "ike_version", "ipsec"}
AZURE_MIN_LIFETIME = 300
IPSEC_KEYS = {"suite", "ike_proposals", "esp_proposals", "ike_lifetime", "child_lifetime", "dpd_delay", "dpd_timeout"}
SKU_ALIASES = {"Default": Sku.BASIC}  # New-AzureVNetGateway -GatewaySKU Default is Basic


def default_plan_path() -> Path:
    return configs_dir() / "plans" / "classic-vnet-to-vnet.yaml"


def read_plan_file(path: str | Path | None) -> tuple[str, str]:
    """(text, display name) of a plan file; the packaged default plan when path is None."""
    p = Path(path) if path else default_plan_path()
    return decode(read_capped(p, "plan file"), p, "plan file"), str(path or p.name)


def load_plan(path: str | Path | None = None) -> tuple[Plan, list[Problem]]:
    """Read, parse and check a plan; raises PlanError listing every error, else returns warnings."""
    text, source = read_plan_file(path)
    return parse_plan_text(text, source)


def parse_plan_text(text: str, source: str) -> tuple[Plan, list[Problem]]:
    out = Collector(source)
    try:
        data = load_yaml(text)
    except YamlProblem as exc:
        out.error("plan", "", exc.message, exc.line)
        out.raise_if_errors()
    return parse_plan_data(data, out)


def parse_path_conditions(fields: dict[str, Any], what: str) -> PathConditions:
    """Path conditions given on the command line (`vnetlab impair`), checked like the plan's
    `backbone:` section; every bad value is named at once (UsageError, exit 2)."""
    out = Collector("command line")
    conditions = _Parser(out).path_conditions(fields, what, None)
    errors = [f"{p.field}: {p.message}" for p in out.problems if p.severity == "error"]
    if conditions is None or errors:
        raise UsageError(f"{what}: " + "; ".join(errors))
    return conditions


def parse_plan_data(data: Any, out: Collector) -> tuple[Plan, list[Problem]]:
    plan = _Parser(out).plan(data)
    out.raise_if_errors()
    check_plan(plan, out)
    out.raise_if_errors()
    check_user_tests(plan, out)
    out.raise_if_errors()
    return plan, out.warnings


@dataclass
class _Parser:
    out: Collector

    # -- generic field readers ---------------------------------------------------------------
    def mapping(self, value: Any, obj: str, fld: str, line: int | None, allowed: set[str] | None) -> LineMap | None:
        if value is None or (isinstance(value, dict) and not isinstance(value, LineMap)):
            plain = value is not None  # plain mappings (from netcfg) have no lines: the Collector knows them
            value = LineMap(value or {})
            value.line, value.key_lines = (None if plain else line), {}
        if not isinstance(value, LineMap):
            self.out.error(obj, fld, f"must be a mapping (key: value), not {_kind(value)}", line)
            return None
        self.out.lines.setdefault((obj, fld), value.line or 0)
        for key in value:
            self.out.lines[(obj, f"{fld}.{key}" if fld else key)] = value.line_of(key) or 0
            if allowed is not None and key not in allowed:
                self.out.error(obj, key, f"unknown key '{key}'{did_you_mean(key, allowed)}", value.line_of(key))
        return value

    def name(self, value: Any, obj: str, fld: str, line: int | None) -> str | None:
        if not isinstance(value, str) or not NAME_RE.match(value):
            self.out.error(obj, fld, f"{_show(value)} is not a valid name: use {NAME_RULE}", line)
            return None
        return value

    def network(self, value: Any, obj: str, fld: str, line: int | None) -> IPv4Network | None:
        text = str(value).strip() if isinstance(value, (str, int)) else None
        if text is None or "/" not in text:
            self.out.error(obj, fld, f"{_show(value)} is not an IPv4 prefix in CIDR form, e.g. 10.11.0.0/16", line)
            return None
        try:
            net = ip_network(text, strict=True)
            if isinstance(net, IPv4Network):
                return net
        except ValueError:
            pass
        try:
            loose = ip_network(text, strict=False)
        except ValueError:
            self.out.error(obj, fld, f"{_show(value)} is not an IPv4 prefix in CIDR form, e.g. 10.11.0.0/16", line)
            return None
        if loose.version != 4:
            self.out.error(obj, fld, f"{text} is IPv6; classic VNets and this lab use IPv4 prefixes", line)
        else:
            self.out.error(obj, fld, f"{text} has host bits set; did you mean {loose}?", line)
        return None

    def networks(self, value: Any, obj: str, fld: str, line: int | None) -> tuple[IPv4Network, ...] | None:
        if isinstance(value, (str, int)):
            value = [value]
        if not isinstance(value, list) or not value:
            self.out.error(obj, fld, "must list one or more IPv4 prefixes, e.g. [10.11.0.0/16, 10.12.0.0/16]", line)
            return None
        nets = [self.network(v, obj, fld, line) for v in value]
        if any(n is None for n in nets):
            return None
        return tuple(n for n in nets if n is not None)

    def address(self, value: Any, obj: str, fld: str, line: int | None) -> IPv4Address | None:
        try:
            addr = ip_address(str(value).strip()) if isinstance(value, str) else None
        except ValueError:
            addr = None
        if not isinstance(addr, IPv4Address):
            self.out.error(obj, fld, f"{_show(value)} is not an IPv4 address, e.g. 203.0.113.10", line)
            return None
        return addr

    def choice(self, value: Any, obj: str, fld: str, line: int | None, choices: dict[str, Any]) -> Any:
        if isinstance(value, str) and value in choices:
            return choices[value]
        hint = did_you_mean(value, choices) if isinstance(value, str) else f"; valid: {', '.join(choices)}"
        self.out.error(obj, fld, f"{_show(value)} is not valid{hint}", line)
        return None

    def integer(self, value: Any, obj: str, fld: str, line: int | None, low: int, high: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.out.error(obj, fld, f"{_show(value)} is not valid: give a whole number from {low} to {high}", line)
            return None
        return value

    # -- objects -----------------------------------------------------------------------------
    def plan(self, data: Any) -> Plan:
        top = self.mapping(data, "plan", "", 1, TOP_KEYS)
        if top is None:
            return Plan(name="lab", vnets=(), local_sites=(), source=self.out.source)
        name = top.get("lab", "classic-vnet-to-vnet")
        if not isinstance(name, str) or not LAB_RE.match(name):
            self.out.error("plan", "lab", f"{_show(name)} is not a valid lab name: use {LAB_RULE}", top.line_of("lab"))
            name = "lab"
        vnets = self.named_objects(top, "vnets", self.vnet)
        sites = self.named_objects(top, "local_sites", self.site)
        if not vnets and "vnets" in top and not self.out.errors:
            self.out.error("plan", "vnets", "a plan needs at least one VNet", top.line_of("vnets"))
        elif "vnets" not in top:
            self.out.error("plan", "vnets", "missing: a plan needs at least one VNet under 'vnets:'", top.line)
        gw_types = {v.name: v.gateway.type for v in vnets if v.gateway}
        conns = self.connections(top.get("connections"), top.line_of("connections"), gw_types)
        tests = self.user_tests(top.get("tests"), top.line_of("tests"))
        backbone = self.backbone(top.get("backbone"), top.line_of("backbone"), vnets, sites)
        plan = Plan(name=name, vnets=tuple(vnets), local_sites=tuple(sites), connections=tuple(conns),
                    source=self.out.source, tests=tuple(tests), backbone=tuple(backbone))
        for gateway, _ in backbone:
            site = next((x for x in sites if x.name == gateway), None)
            stands_for = plan.vnet_of_site(site) if site is not None else None
            if stands_for is not None:
                self.out.error("plan", f"backbone.{gateway}", f"{gateway} stands for VNet {stands_for.name}, whose "
                               f"gateway is the device on that path: set it under backbone.{stands_for.name}",
                               top.line_of("backbone"))
        for site in sites:
            stands_for = plan.vnet_of_site(site) if site.behind_nat else None
            if stands_for is not None:
                self.out.error(f"local_sites.{site.name}", "behind_nat", f"{site.name} stands for VNet "
                               f"{stands_for.name}, whose gateway has a public address of its own: behind_nat is for "
                               "an on-premises site's VPN device", top.line_of("local_sites"))
        return plan

    def backbone(self, value: Any, line: int | None, vnets: list, sites: list) -> list:
        """`backbone:` keyed by a VNet with a gateway or a local site: that gateway's (or on-premises
        device's) link to the backbone. Whether a site is on-premises is known once the model is
        whole: rules.check_backbone."""
        if value is None:
            return []
        f = self.mapping(value, "plan", "backbone", line, None)
        if f is None:
            return []
        known = {v.name for v in vnets if v.gateway} | {s.name for s in sites}
        result = []
        for gateway, raw in f.items():
            obj = f"backbone.{gateway}"
            if gateway not in known:
                self.out.error("plan", f"backbone.{gateway}", f"'{gateway}' is neither a VNet with a gateway nor a "
                               f"local site{did_you_mean(str(gateway), known)}", f.line_of(gateway))
                continue
            conditions = self.path_conditions(raw, obj, f.line_of(gateway))
            if conditions is not None:
                result.append((gateway, conditions))
        return result

    def path_conditions(self, raw: Any, obj: str, line: int | None) -> PathConditions | None:
        """Every bad field is reported, each naming what would be valid."""
        f = self.mapping(raw, obj, "", line, PATH_KEYS)
        if f is None:
            return None
        ok, values = True, {}
        if "mtu" in f:
            values["mtu"] = self.integer(f["mtu"], obj, "mtu", f.line_of("mtu"), *MTU_RANGE)
        if "loss" in f:
            loss = f["loss"]
            if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not 0 <= loss <= 100:
                self.out.error(obj, "loss", f"{_show(loss)} is not valid: give a percentage from 0 to 100",
                               f.line_of("loss"))
                values["loss"] = None
            else:
                values["loss"] = float(loss)
        for key, high in (("delay_ms", 10000), ("jitter_ms", 10000)):
            if key in f:
                values[key] = self.integer(f[key], obj, key, f.line_of(key), 0, high)
        if values.get("jitter_ms") and not values.get("delay_ms"):
            self.out.error(obj, "jitter_ms", "jitter varies a delay: set delay_ms too", f.line_of("jitter_ms"))
            ok = False
        if "block" in f:
            block = f["block"]
            block = [block] if isinstance(block, str) else block
            bad = [b for b in block if b not in BLOCKABLE] if isinstance(block, list) else [block]
            if bad or not block:
                self.out.error(obj, "block", f"{_show(bad[0] if bad else block)} is not valid: list what a firewall "
                               f"on the path drops, of {', '.join(f'{k} ({v})' for k, v in BLOCKABLE.items())}",
                               f.line_of("block"))
                values["block"] = None
            else:
                values["block"] = frozenset(block)
        if not ok or any(v is None for v in values.values()):
            return None
        return PathConditions(**values)

    def user_tests(self, value: Any, line: int | None) -> list[UserCheck]:
        """The plan's own connectivity checks; whether `from`/`to` name real nodes is checked
        against the topology afterwards (rules.check_user_tests)."""
        if value is None:
            return []
        if not isinstance(value, list):
            self.out.error("plan", "tests", f"must be a list of checks, not {_kind(value)}", line)
            return []
        result, names = [], set()
        for i, raw in enumerate(value):
            obj = f"tests[{i}]" + (f" ({raw['name']})" if isinstance(raw, dict) and isinstance(raw.get("name"), str)
                                   else "")
            f = self.mapping(raw, obj, "", line, TEST_KEYS)
            if f is None:
                continue
            name = self.name(f.get("name"), obj, "name", f.line_of("name"))
            if name in names:
                self.out.error(obj, "name", f"duplicate: another test is named '{name}'", f.line_of("name"))
            names.add(name)
            ends = []
            for key, example in (("from", "TestVNet1/default"), ("to", "TestVNet4/default or 10.41.0.4")):
                end = f.get(key)
                if not isinstance(end, str) or not end:
                    self.out.error(obj, key, f"missing: name a test host node, e.g. {example}", f.line_of(key) or f.line)
                ends.append(end)
            proto = self.choice(f.get("proto", "icmp"), obj, "proto", f.line_of("proto"),
                                {"icmp": "icmp", "tcp": "tcp", "udp": "udp"})
            expect = self.choice(f.get("expect", "reach"), obj, "expect", f.line_of("expect"),
                                 {"reach": "reach", "blocked": "blocked"})
            port = None
            if proto in ("tcp", "udp"):
                if "port" not in f:
                    self.out.error(obj, "port", f"missing: a {proto} check needs the destination port, 1-65535",
                                   f.line)
                else:
                    port = self.integer(f["port"], obj, "port", f.line_of("port"), 1, 65535)
            elif "port" in f and proto == "icmp":
                self.out.error(obj, "port", "an icmp check has no port; remove it, or use proto: tcp or udp",
                               f.line_of("port"))
            disconnect, during_ok = None, True
            if "during" in f:
                during = self.mapping(f["during"], obj, "during", f.line_of("during"), DURING_KEYS)
                ref = during.get("disconnect") if during is not None else None
                if during is None or not isinstance(ref, str) or ref.count("/") != 1:
                    self.out.error(obj, "during", "give the condition the check must hold under, e.g. during: "
                                   "{disconnect: TestVNet1/VNet4Local} (a VNet and the local site of one connection)",
                                   f.line_of("during"))
                    during_ok = False
                else:
                    disconnect = tuple(ref.split("/"))
            if name and all(isinstance(e, str) and e for e in ends) and proto and expect and during_ok and (
                    proto == "icmp" or port is not None):
                result.append(UserCheck(name, ends[0], ends[1], proto, port, expect, disconnect))
        return result

    def named_objects(self, top: LineMap, key: str, build: Callable[[str, LineMap, str], Any]) -> list[Any]:
        section = self.mapping(top.get(key), "plan", key, top.line_of(key), None)
        if section is None:
            return []
        result = []
        for raw_name, body in section.items():
            obj = f"{key}.{raw_name}"
            line = section.line_of(raw_name)
            name = self.name(raw_name, obj, "name", line)
            fields = self.mapping(body, obj, "", line, None)
            if name is not None and fields is not None:
                built = build(name, fields, obj)
                if built is not None:
                    result.append(built)
        return result

    def vnet(self, name: str, f: LineMap, obj: str) -> VNet | None:
        self.mapping(f, obj, "", f.line, VNET_KEYS)
        location = f.get("location")
        if location is None:
            self.out.error(obj, "location", "missing: give the VNet's Azure location, e.g. 'East US'", f.line)
        elif not isinstance(location, str) or not LOCATION_RE.match(location):
            self.out.error(obj, "location", f"{_show(location)} is not a valid location: letters, digits, spaces, "
                           "'-', '_' or parentheses, at most 64", f.line_of("location"))
        rg = f.get("resource_group")
        if rg is not None:
            rg = self.name(rg, obj, "resource_group", f.line_of("resource_group"))
        if "address_space" not in f:
            self.out.error(obj, "address_space", "missing: list the VNet's prefixes, e.g. [10.11.0.0/16]", f.line)
            space = None
        else:
            space = self.networks(f["address_space"], obj, "address_space", f.line_of("address_space"))
        subnets = []
        raw_subnets = self.mapping(f.get("subnets"), obj, "subnets", f.line_of("subnets"), None)
        for sname, prefix in (raw_subnets or {}).items():
            line = raw_subnets.line_of(sname)
            if sname == "GatewaySubnet":
                self.out.error(obj, "subnets.GatewaySubnet", "give the gateway subnet as 'gateway_subnet:', "
                               "not as an ordinary subnet", line)
                continue
            ok_name = self.name(sname, obj, f"subnets.{sname}", line)
            net = self.network(prefix, obj, f"subnets.{sname}", line)
            if ok_name and net:
                subnets.append(Subnet(ok_name, net))
        gw_subnet = None
        if f.get("gateway_subnet") is not None:
            gw_subnet = self.network(f["gateway_subnet"], obj, "gateway_subnet", f.line_of("gateway_subnet"))
        gateway = None
        if "gateway" in f:
            g = self.mapping(f["gateway"], obj, "gateway", f.line_of("gateway"), GATEWAY_KEYS)
            if g is not None:
                gtype = self.choice(g.get("type", "DynamicRouting"), obj, "gateway.type", g.line_of("type"),
                                    {t.value: t for t in GatewayType})
                skus = {s.value: s for s in Sku} | SKU_ALIASES
                sku = self.choice(g.get("sku", "Standard"), obj, "gateway.sku", g.line_of("sku"), skus)
                clamp = (self.integer(g["tcp_mss_clamp"], obj, "gateway.tcp_mss_clamp", g.line_of("tcp_mss_clamp"),
                                      *MSS_RANGE) if "tcp_mss_clamp" in g else None)
                if gtype and sku and (clamp is not None or "tcp_mss_clamp" not in g):
                    gateway = Gateway(gtype, sku, clamp)
        dns = []
        raw_dns = self.mapping(f.get("dns_servers"), obj, "dns_servers", f.line_of("dns_servers"), None)
        for dname, ip in (raw_dns or {}).items():
            line = raw_dns.line_of(dname)
            ok_name = self.name(dname, obj, f"dns_servers.{dname}", line)
            addr = self.address(ip, obj, f"dns_servers.{dname}", line)
            if ok_name and addr:
                dns.append((ok_name, addr))
        if space is None or not isinstance(location, str):
            return None
        return VNet(name=name, location=location, address_space=space, subnets=tuple(subnets),
                    gateway_subnet=gw_subnet, gateway=gateway, resource_group=rg, dns_servers=tuple(dns))

    def site(self, name: str, f: LineMap, obj: str) -> LocalSite | None:
        self.mapping(f, obj, "", f.line, SITE_KEYS)
        if "address_space" not in f:
            self.out.error(obj, "address_space", "missing: list the prefixes reached through this site", f.line)
            return None
        space = self.networks(f["address_space"], obj, "address_space", f.line_of("address_space"))
        raw_ip = f.get("gateway_ip", "auto")
        ip = None
        if raw_ip != "auto":
            ip = self.address(raw_ip, obj, "gateway_ip", f.line_of("gateway_ip"))
            if ip is None:
                return None
        nat = f.get("behind_nat", False)
        if not isinstance(nat, bool):
            self.out.error(obj, "behind_nat", f"{_show(nat)} is not valid: give true (its VPN device sits behind a "
                           "NAT) or false", f.line_of("behind_nat"))
            return None
        return LocalSite(name=name, address_space=space, gateway_ip=ip, behind_nat=nat) if space else None

    def connections(self, value: Any, line: int | None, gw_types: dict[str, GatewayType]) -> list[Connection]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.out.error("plan", "connections", f"must be a list of connections, not {_kind(value)}", line)
            return []
        result = []
        for i, raw in enumerate(value):
            vnet, site = (raw.get("vnet"), raw.get("local_site")) if isinstance(raw, dict) else (None, None)
            obj = connection_label(i, vnet, site)
            f = self.mapping(raw, obj, "", line, CONN_KEYS)
            if f is None:
                continue
            for key in ("vnet", "local_site"):
                if key not in f:
                    self.out.error(obj, key, f"missing: name the {key.replace('_', ' ')} this tunnel joins", f.line)
                elif not isinstance(f[key], str):
                    self.out.error(obj, key, f"{_show(f[key])} is not a name", f.line_of(key))
            key = self.shared_key(f, obj)
            gtype = gw_types.get(vnet, GatewayType.DYNAMIC) if isinstance(vnet, str) else GatewayType.DYNAMIC
            version = 2 if gtype is GatewayType.DYNAMIC else 1
            if "ike_version" in f:
                version = self.integer(f["ike_version"], obj, "ike_version", f.line_of("ike_version"), 1, 2)
            policy = self.ipsec(f.get("ipsec"), obj, f.line_of("ipsec"), gtype)
            if isinstance(vnet, str) and isinstance(site, str) and version and policy:
                result.append(Connection(vnet=vnet, local_site=site, ike_version=version, ipsec=policy,
                                         shared_key=key))
        return result

    def shared_key(self, f: LineMap, obj: str) -> SharedKey | None:
        if f.get("shared_key") is None:
            return None
        raw, line = f["shared_key"], f.line_of("shared_key")
        if not isinstance(raw, str):
            self.out.error(obj, "shared_key", f"must be a string of letters and digits; quote it in YAML "
                           f"(it was read as {_kind(raw)})", line)
            return None
        if not KEY_RE.match(raw):
            bad = next((i + 1 for i, ch in enumerate(raw) if not ch.isascii() or not ch.isalnum()), None)
            why = f"character {bad} is not a letter or digit" if bad else f"it has {len(raw)} characters"
            self.out.error(obj, "shared_key", f"the key (masked) is not valid: {why}; a classic shared key is "
                           "1-128 letters and digits", line)
            return None
        return SharedKey(raw)

    def ipsec(self, value: Any, obj: str, line: int | None, gtype: GatewayType) -> IpsecPolicy | None:
        f = self.mapping(value, obj, "ipsec", line, IPSEC_KEYS)
        if f is None:
            return None
        suite = f.get("suite", "gcm-first")
        ok = True
        if suite not in SUITES:
            self.choice(suite, obj, "ipsec.suite", f.line_of("suite"), {s: s for s in SUITES})
            ok, suite = False, "gcm-first"  # go on, so every bad field of the block is reported at once
        policy = default_policy(gtype, suite)
        changes: dict[str, Any] = {}
        for key in ("ike_proposals", "esp_proposals"):
            if key in f:
                props = self.proposals(f[key], obj, f"ipsec.{key}", f.line_of(key))
                ok = ok and props is not None
                changes[key] = props
        # lifetimes down to 10 s, so that a lab can show rekeys within a minute; Azure's start at 300 s
        limits = {"ike_lifetime": (10, 172800), "child_lifetime": (10, 172800), "dpd_delay": (0, 3600),
                  "dpd_timeout": (9, 3600)}
        for key, (low, high) in limits.items():
            if key in f:
                val = self.integer(f[key], obj, f"ipsec.{key}", f.line_of(key), low, high)
                ok = ok and val is not None
                changes[key] = val
                if key.endswith("lifetime") and val is not None and val < AZURE_MIN_LIFETIME:
                    self.out.warning(obj, f"ipsec.{key}", f"{val} s is shorter than Azure allows ({AZURE_MIN_LIFETIME}-"
                                     "172800 s): fine for watching rekeys in the lab, not for a real gateway",
                                     f.line_of(key))
        if changes.get("dpd_timeout") and "dpd_delay" not in changes and policy.dpd_delay:
            changes["dpd_delay"] = dpd_delay_for(changes["dpd_timeout"])  # DPD on Azure's timing
        return IpsecPolicy(**{**policy.__dict__, **changes}) if ok else None

    def proposals(self, value: Any, obj: str, fld: str, line: int | None) -> tuple[str, ...] | None:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.out.error(obj, fld, "must list one or more proposals, e.g. [aes256-sha256-modp2048]", line)
            return None
        for prop in value:
            tokens = prop.split("-") if isinstance(prop, str) else [None]
            unknown = [t for t in tokens if t not in PROPOSAL_TOKENS]
            if unknown:
                hint = did_you_mean(str(unknown[0]), PROPOSAL_TOKENS).replace("; valid:", "; known algorithms:")
                self.out.error(obj, fld, f"{_show(prop)}: unknown algorithm {_show(unknown[0])}{hint}", line)
                return None
        return tuple(value)


def _kind(value: Any) -> str:
    return {dict: "a mapping", LineMap: "a mapping", list: "a list", str: "a string", int: "a number",
            float: "a number", bool: "true/false", type(None): "empty"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= 60 else text[:57] + "...'"
