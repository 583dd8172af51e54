"""The IKE conversation as a timeline: what crossed the backbone, decoded and decrypted.

Input: the lab's IKE recording (capture.py writes LAB/ike.pcap with tcpdump) and the session
keys the gateways logged (keylog.py). scapy decodes the messages; the `cryptography` package
opens IKEv2's encrypted payload (AES-GCM, AES-CBC or 3DES with HMAC). One line per message:
time, sender → receiver, exchange, request/response, message ID, and the payloads that matter.
No key material is ever part of the output.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import BinaryIO, Callable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from scapy.contrib.ikev2 import IKEv2, IKEv2NotifyMessageTypes
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Ether

from .keylog import IkeKeys
from .keytables import split_proposal

EXCHANGES_V2 = {34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL"}
EXCHANGES_V1 = {2: "Main Mode", 4: "Aggressive Mode", 5: "INFORMATIONAL", 32: "Quick Mode"}
GROUPS = {1: "MODP_768", 2: "MODP_1024", 5: "MODP_1536", 14: "MODP_2048", 15: "MODP_3072", 16: "MODP_4096",
          19: "ECP_256", 20: "ECP_384", 21: "ECP_521", 24: "MODP_2048_256", 31: "CURVE_25519"}
_HASHES = {"HMAC_SHA1_96": (hashlib.sha1, 12), "HMAC_SHA2_256_128": (hashlib.sha256, 16),
           "HMAC_SHA2_384_192": (hashlib.sha384, 24), "HMAC_SHA2_512_256": (hashlib.sha512, 32),
           "HMAC_MD5_96": (hashlib.md5, 12)}
_LINKTYPES = {1: Ether, 113: CookedLinux, 276: CookedLinuxV2}
SK = 46


@dataclass(frozen=True)
class Message:
    """One IKE message as the timeline shows it."""
    time: str  # UTC, ISO 8601 with milliseconds
    seconds: float  # since the first message of the trace
    src: str
    dst: str
    src_name: str
    dst_name: str
    ike_version: int
    exchange: str
    response: bool
    message_id: int
    spi_i: str
    spi_r: str
    payloads: list[str]
    notifies: list[str] = field(default_factory=list)
    decrypted: bool | None = None  # None: nothing was encrypted; False: encrypted, no key opened it
    note: str = ""  # what the keys say about an IKEv1 message (which side can read it)

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        kind = "response" if self.response else "request"
        who = f"{self.src_name or self.src} ({self.src}) → {self.dst_name or self.dst} ({self.dst})"
        empty = "(empty: a liveness check, DPD)" if self.exchange == "INFORMATIONAL" else "(empty)"
        body = " ".join(self.payloads) if self.payloads else empty
        if self.decrypted is False and not self.note:
            body += "  [encrypted; no key table entry opens it]"
        if self.note:
            body += f"  [{self.note}]"
        return f"{self.time[11:23]}  {who}  {self.exchange} {kind} msg {self.message_id}: {body}"


def read_pcap(fh: BinaryIO) -> Iterator[tuple[float, object] | None]:
    """The packets of a pcap file as (timestamp, scapy packet); None at the current end of a file
    that is still being written, so `--follow` can wait and go on where it stopped."""
    head = fh.read(24)
    while len(head) < 24:
        yield None
        head += fh.read(24 - len(head))
    magic = struct.unpack("<I", head[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
    layer = _LINKTYPES.get(struct.unpack(endian + "I", head[20:24])[0], Ether)
    pending = b""
    while True:
        chunk = fh.read(65536)
        if not chunk:
            yield None
            continue
        pending += chunk
        while len(pending) >= 16:
            sec, frac, incl, _orig = struct.unpack(endian + "IIII", pending[:16])
            if len(pending) < 16 + incl:
                break
            data, pending = pending[16:16 + incl], pending[16 + incl:]
            yield sec + frac / (1e9 if nano else 1e6), layer(data)


def ike_bytes(pkt) -> bytes | None:
    if IP not in pkt or UDP not in pkt:
        return None
    udp = pkt[UDP]
    raw = bytes(udp.payload)
    if 4500 in (udp.sport, udp.dport):
        if raw[:4] != b"\0\0\0\0":
            return None  # ESP in UDP
        raw = raw[4:]
    return raw if len(raw) >= 28 else None


class Tracer:
    """Turns IKE packets into Messages; keys: every IKE_SA key the gateways logged."""

    def __init__(self, load_keys: Callable[[], list[IkeKeys]], names: dict[str, str]):
        self.load_keys = load_keys
        self.keys: dict[tuple[str, str], list[IkeKeys]] = {}
        self._reload()
        self.names = names
        self.start: float | None = None
        self.v1: dict[str, _V1State] = {}

    def _reload(self) -> None:
        loaded = self.load_keys()
        if loaded is getattr(self, "_loaded", None):
            return  # the loader found nothing new
        self._loaded, self.keys = loaded, {}
        for k in loaded:
            bucket = self.keys.setdefault((k.spi_i, k.spi_r), [])
            if all((k.sk_ei, k.sk_er, k.ka) != (o.sk_ei, o.sk_er, o.ka) for o in bucket):
                bucket.append(k)

    def candidates(self, spi_i: str, spi_r: str) -> list[IkeKeys]:
        """The keys logged for this IKE_SA; asked of the loader again when there are none yet (a
        trace that follows the wire can see a message before the recorder has written its keys)."""
        if (spi_i, spi_r) not in self.keys:
            self._reload()
        return self.keys.get((spi_i, spi_r), [])

    def message(self, ts: float, pkt) -> Message | None:
        raw = ike_bytes(pkt)
        if raw is None:
            return None
        if self.start is None:
            self.start = ts
        length = struct.unpack("!I", raw[24:28])[0]
        raw = raw[:length] if 28 <= length <= len(raw) else raw
        version = raw[17] >> 4
        src, dst = pkt[IP].src, pkt[IP].dst
        spi_i, spi_r = raw[0:8].hex(), raw[8:16].hex()
        when = datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")
        base = dict(time=when, seconds=round(ts - self.start, 6), src=src, dst=dst, src_name=self.names.get(src, ""),
                    dst_name=self.names.get(dst, ""), ike_version=version, spi_i=spi_i, spi_r=spi_r)
        if version == 2:
            return self._v2(raw, base)
        if version == 1:
            return self._v1(raw, base)
        return None

    # -- IKEv2 ---------------------------------------------------------------------------------

    def _v2(self, raw: bytes, base: dict) -> Message:
        exch, flags, msgid = raw[18], raw[19], struct.unpack("!I", raw[20:24])[0]
        from_initiator, response = bool(flags & 0x08), bool(flags & 0x20)
        pkt = IKEv2(raw)
        payloads, notifies = _describe_v2(pkt, response)
        decrypted = None
        if raw[16] == SK or any(p.startswith("SK") for p in payloads):
            decrypted = False
            for keys in self.candidates(base["spi_i"], base["spi_r"]):
                opened = open_sk(raw, keys, from_initiator)
                if opened is not None:
                    first, plain = opened
                    inner = IKEv2(raw[:16] + bytes([first]) + raw[17:28] + plain)
                    payloads, notifies = _describe_v2(inner, response)
                    decrypted = True
                    break
            if not decrypted:
                payloads = ["SK{…}"]
        return Message(exchange=EXCHANGES_V2.get(exch, f"exchange {exch}"), response=response, message_id=msgid,
                       payloads=payloads, notifies=notifies, decrypted=decrypted, **base)

    # -- IKEv1 ---------------------------------------------------------------------------------

    def _v1(self, raw: bytes, base: dict) -> Message:
        """IKEv1 has no response flag and no integrity on its encrypted payloads: who sent a message
        follows from who sent the SA's first one, and a key "opens" a message when the plaintext
        is a well-formed payload chain. The CBC IVs come from the wire (RFC 2409 appendix B)."""
        exch, flags, msgid = raw[18], raw[19], struct.unpack("!I", raw[20:24])[0]
        sa = self.v1.setdefault(base["spi_i"], _V1State())
        if not sa.initiator and raw[8:16] == b"\0" * 8:
            sa.initiator = base["src"]
        response = bool(sa.initiator) and base["src"] != sa.initiator
        digest = hashlib.sha1(raw).digest()
        if digest in sa.seen:  # a retransmission: same bytes, same meaning, IVs unchanged
            name, payloads, notifies, decrypted, note = sa.seen[digest]
            return Message(exchange=name + " (retransmission)", response=response, message_id=msgid,
                           payloads=payloads, notifies=notifies, decrypted=decrypted, note=note, **base)
        name = EXCHANGES_V1.get(exch, f"exchange {exch}")
        if exch == 2:
            sa.main_count += 1
            name += f" {sa.main_count}/6" if sa.main_count <= 6 else ""
        body, decrypted, note = raw[28:], None, ""
        if not flags & 0x01:
            payloads, notifies = _describe_v1(raw[16], body)
            for p in payloads:
                if p.startswith("KE"):
                    sa.ke.append(_ke_value(raw[16], body))
        else:
            cands = self.candidates(base["spi_i"], base["spi_r"])
            hash_fn, bs = _v1_params(cands[0].proposal if cands else "")
            payloads, notifies = ["encrypted{…}"], []
            opened, refused = [], []
            for keys in cands:
                chain = next((c for iv in self._v1_ivs(sa, exch, msgid, hash_fn, bs)
                              if (plain := open_v1(body, keys, iv)) is not None
                              and (c := _describe_v1(raw[16], plain))[0]), None)
                if chain is not None:
                    if not opened:
                        payloads, notifies = chain
                    opened.append(keys.gateway)
                else:
                    refused.append(keys.gateway)
            decrypted = bool(opened)
            if opened and refused:
                note = (f"only {', '.join(sorted(set(opened)))}'s key opens it; {', '.join(sorted(set(refused)))} "
                        "derived another key (the pre-shared keys differ) and reads garbage")
            usable = len(body) - len(body) % bs
            if usable >= bs:
                sa.last_block[msgid if exch != 2 else 0] = body[usable - bs:usable]
        sa.seen[digest] = (name, payloads, notifies, decrypted, note)
        return Message(exchange=name, response=response, message_id=msgid, payloads=payloads, notifies=notifies,
                       decrypted=decrypted, note=note, **base)

    def _v1_ivs(self, sa: "_V1State", exch: int, msgid: int, hash_fn, bs: int) -> list[bytes]:
        """Phase 1: hash(g^xi | g^xr), then the previous message's last cipher block. Phase 2
        (Quick Mode, informational): hash(phase 1's last block | message ID), then chained. A side
        that could not read phase 1's last message still chains from the first IV: tried second."""
        if exch != 2 and msgid in sa.last_block:
            return [sa.last_block[msgid]]
        first = hash_fn(b"".join(sa.ke[:2])).digest()[:bs] if len(sa.ke) >= 2 else None
        if exch == 2:
            return [sa.last_block[0]] if 0 in sa.last_block else [first] if first else []
        mid = struct.pack("!I", msgid)
        return [hash_fn(block + mid).digest() for block in (sa.last_block.get(0), first) if block]


@dataclass
class _V1State:
    initiator: str = ""
    main_count: int = 0
    ke: list[bytes] = field(default_factory=list)
    last_block: dict[int, bytes] = field(default_factory=dict)  # message ID (0: phase 1) -> last cipher block
    seen: dict[bytes, tuple] = field(default_factory=dict)  # message digest -> how it was described


def _v1_params(proposal: str):
    """(hash of the phase 1 IVs, cipher block size) of an IKEv1 proposal."""
    prf = next((p for p in proposal.split("/") if p.startswith("PRF_")), "PRF_HMAC_SHA1")
    digest = {"PRF_HMAC_SHA2_256": hashlib.sha256, "PRF_HMAC_SHA2_384": hashlib.sha384,
              "PRF_HMAC_SHA2_512": hashlib.sha512, "PRF_HMAC_MD5": hashlib.md5}.get(prf, hashlib.sha1)
    return digest, 8 if proposal.startswith(("3DES", "DES")) else 16


def open_v1(body: bytes, keys: IkeKeys, iv_seed: bytes | None) -> bytes | None:
    """Decrypt an IKEv1 message body with a phase 1 key (AES-CBC or 3DES-CBC)."""
    name = split_proposal(keys.proposal)[0]
    if iv_seed is None or not keys.ka or name not in ("AES_CBC", "3DES_CBC"):
        return None
    algo = algorithms.AES(bytes.fromhex(keys.ka)) if name == "AES_CBC" else TripleDES(bytes.fromhex(keys.ka))
    bs = algo.block_size // 8
    usable = len(body) - len(body) % bs
    if usable == 0:
        return None
    dec = Cipher(algo, modes.CBC(iv_seed[:bs])).decryptor()
    return dec.update(body[:usable]) + dec.finalize()


def open_sk(raw: bytes, keys: IkeKeys, from_initiator: bool) -> tuple[int, bytes] | None:
    """Decrypt and authenticate an IKEv2 Encrypted payload (RFC 7296 §3.14, RFC 5282 for GCM).
    Returns (first inner payload type, plaintext), or None when this key does not open it."""
    np, off = raw[16], 28
    while np != SK:
        if np == 0 or off + 4 > len(raw):
            return None
        np, off = raw[off], off + struct.unpack("!H", raw[off + 2:off + 4])[0]
    first, plen = raw[off], struct.unpack("!H", raw[off + 2:off + 4])[0]
    body, aad_end = raw[off + 4:off + plen], off + 4
    key = bytes.fromhex(keys.sk_ei if from_initiator else keys.sk_er)
    name, _bits, integ = split_proposal(keys.proposal)
    try:
        if name == "AES_GCM_16":
            plain = AESGCM(key[:-4]).decrypt(key[-4:] + body[:8], body[8:], raw[:aad_end])
        elif name in ("AES_CBC", "3DES_CBC") and integ in _HASHES:
            digest, icv_len = _HASHES[integ]
            akey = bytes.fromhex(keys.sk_ai if from_initiator else keys.sk_ar)
            mac = hmac.new(akey, raw[:off + plen - icv_len], digest).digest()[:icv_len]
            if not hmac.compare_digest(mac, body[-icv_len:]):
                return None
            algo = algorithms.AES(key) if name == "AES_CBC" else TripleDES(key)
            bs = algo.block_size // 8
            dec = Cipher(algo, modes.CBC(body[:bs])).decryptor()
            plain = dec.update(body[bs:-icv_len]) + dec.finalize()
        else:
            return None
    except (InvalidTag, ValueError):
        return None
    pad = plain[-1] if plain else 0
    return first, plain[:len(plain) - pad - 1]


def _ts(selectors) -> str:
    nets = []
    for t in selectors or []:
        try:
            start = ipaddress.ip_address(t.starting_address_v4)
            end = ipaddress.ip_address(t.ending_address_v4)
            nets += [str(n) for n in ipaddress.summarize_address_range(start, end)]
        except (AttributeError, ValueError, TypeError):
            nets.append("?")
    return ", ".join(nets)


def _transforms(prop) -> str:
    parts = []
    for t in prop.trans or []:
        name = t.sprintf("%transform_id%")
        if getattr(t, "key_length", None):
            name += f"_{t.key_length}"
        parts.append(name)
    spi = f" SPI {prop.SPI.hex()}" if prop.SPI else ""
    return f"{prop.sprintf('%proto%')}:{'/'.join(parts)}{spi}"


def _describe_v2(pkt, response: bool) -> tuple[list[str], list[str]]:
    out, notifies = [], []
    layer = pkt.payload
    while layer is not None and layer.name != "NoPayload":
        cls = type(layer).__name__
        if cls == "IKEv2_SA":
            props = list(layer.prop or [])
            if not props:
                out.append("SA()")
            elif response:
                out.append(f"SA(chosen {_transforms(props[0])})")
            else:
                more = f" +{len(props) - 1} more" if len(props) > 1 else ""
                out.append(f"SA(offered {_transforms(props[0])}{more})")
        elif cls == "IKEv2_KE":
            out.append(f"KE({GROUPS.get(layer.group, layer.group)})")
        elif cls == "IKEv2_Nonce":
            out.append("No")
        elif cls == "IKEv2_Notify":
            name = IKEv2NotifyMessageTypes.get(layer.type, str(layer.type))
            notifies.append(name)
            out.append({"NAT_DETECTION_SOURCE_IP": "N(NATD_S_IP)",
                        "NAT_DETECTION_DESTINATION_IP": "N(NATD_D_IP)"}.get(name, f"N({name})"))
        elif cls in ("IKEv2_IDi", "IKEv2_IDr"):
            out.append(f"{cls[-3:]}({_identity(layer)})")
        elif cls in ("IKEv2_TSi", "IKEv2_TSr"):
            out.append(f"{cls[-3:]}({_ts(layer.traffic_selector)})")
        elif cls == "IKEv2_AUTH":
            out.append("AUTH")
        elif cls == "IKEv2_Delete":
            proto = {1: "IKE", 2: "AH", 3: "ESP"}.get(layer.proto, str(layer.proto))
            spis = [s.hex() if isinstance(s, bytes) else f"{s:08x}" for s in (layer.SPI or [])]
            out.append(f"D({proto}{' ' + ' '.join(spis) if spis else ''})")
        elif cls == "IKEv2_VendorID":
            out.append("V")
        elif cls == "IKEv2_Encrypted":
            out.append("SK{…}")
        elif cls == "IKEv2_CP":
            out.append("CP")
        else:
            out.append(cls.replace("IKEv2_", ""))
        layer = layer.payload
    return out, notifies


def _identity(layer) -> str:
    kind = layer.sprintf("%IDtype%")
    data = bytes(layer.ID) if not isinstance(layer.ID, str) else layer.ID.encode()
    if kind == "IPv4_addr" and len(data) == 4:
        return str(ipaddress.IPv4Address(data))
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        return data.hex()


V1_PAYLOADS = {1: "SA", 4: "KE", 5: "ID", 6: "CERT", 7: "CR", 8: "HASH", 9: "SIG", 10: "No", 11: "N", 12: "D",
               13: "V", 14: "A", 20: "NAT-D", 21: "NAT-OA"}
V1_NOTIFIES = {14: "NO_PROPOSAL_CHOSEN", 16: "PAYLOAD_MALFORMED", 18: "INVALID_ID_INFORMATION",
               23: "INVALID_HASH_INFORMATION", 24: "AUTHENTICATION_FAILED", 24576: "RESPONDER_LIFETIME",
               24578: "INITIAL_CONTACT", 36136: "R_U_THERE", 36137: "R_U_THERE_ACK"}


def _v1_chain(first: int, body: bytes) -> list[tuple[int, bytes]] | None:
    """(type, payload body) of each payload; None unless the chain is well formed (a wrong key's
    plaintext is not): known types, lengths within the message, ending in "no next payload"."""
    out, np, off = [], first, 0
    while np:
        if np not in V1_PAYLOADS or off + 4 > len(body):
            return None
        nxt, length = body[off], struct.unpack("!H", body[off + 2:off + 4])[0]
        if length < 4 or off + length > len(body) or body[off + 1] != 0:
            return None
        out.append((np, body[off + 4:off + length]))
        np, off = nxt, off + length
    return out if len(body) - off < 32 else None  # what is left is CBC padding


def _describe_v1(first: int, body: bytes) -> tuple[list[str], list[str]]:
    chain = _v1_chain(first, body)
    if chain is None:
        return [], []
    out, notifies = [], []
    for kind, data in chain:
        name = V1_PAYLOADS[kind]
        if name == "ID" and len(data) >= 8 and data[0] == 1:
            name = f"ID({ipaddress.IPv4Address(data[4:8])})"
        elif name == "ID" and len(data) >= 12 and data[0] == 4:
            net = ipaddress.IPv4Network((int.from_bytes(data[4:8], "big"), bin(int.from_bytes(data[8:12], "big")).count("1")))
            name = f"ID({net})"
        elif name == "N" and len(data) >= 8:
            note = V1_NOTIFIES.get(struct.unpack("!H", data[6:8])[0], str(struct.unpack("!H", data[6:8])[0]))
            notifies.append(note)
            name = f"N({note})"
        elif name == "D" and len(data) >= 8:
            name = "D(" + {1: "ISAKMP", 3: "ESP"}.get(data[4], str(data[4])) + ")"
        out.append(name)
    return out, notifies


def _ke_value(first: int, body: bytes) -> bytes:
    return next((data for kind, data in _v1_chain(first, body) or [] if kind == 4), b"")
