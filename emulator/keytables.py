"""Wireshark's key tables from the gateways' session keys (emulator/keylog.py).

Three of Wireshark's "UAT" tables, in the exact format its dissectors read (names of algorithms
as packet-isakmp.c and packet-ipsec.c spell them):
- ikev2_decryption_table: initiator SPI, responder SPI, SK_ei, SK_er, encryption, SK_ai, SK_ar,
  integrity ("NONE [RFC4306]" for AEAD ciphers, whose key includes the 4-byte salt);
- ikev1_decryption_table: initiator cookie, phase 1 encryption key;
- esp_sa: protocol, source, destination, SPI, encryption, key, authentication, key (0x-prefixed).
These are a lab's session keys, never its pre-shared keys.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from emulator.keyfiles import KEYS_FILE
from emulator.keylog import EspKeys, IkeKeys, from_json
from emulator.render import write_private

TABLES = ("ikev2_decryption_table", "ikev1_decryption_table", "esp_sa")
PREFERENCES = {"esp.enable_encryption_decode": "TRUE", "esp.enable_authentication_check": "TRUE"}


class UnknownAlgorithm(ValueError):
    pass


def split_proposal(proposal: str) -> tuple[str, int | None, str | None]:
    """AES_GCM_16_256/PRF_…/MODP_… → ("AES_GCM_16", 256, None); AES_CBC_256/HMAC_SHA1_96/… → ("AES_CBC", 256, "HMAC_SHA1_96")."""
    parts = proposal.split("/")
    enc = parts[0]
    name, _, bits = enc.rpartition("_")
    if not bits.isdigit() or name in ("", "3DES", "DES"):
        name, bits = enc, ""
    integ = next((p for p in parts[1:] if p.startswith(("HMAC_", "AES_XCBC", "AES_CMAC"))), None)
    return name, int(bits) if bits else None, integ


_IKEV2_INTEG = {"HMAC_MD5_96": "HMAC_MD5_96 [RFC2403]", "HMAC_SHA1_96": "HMAC_SHA1_96 [RFC2404]",
                "HMAC_SHA2_256_128": "HMAC_SHA2_256_128 [RFC4868]", "HMAC_SHA2_384_192": "HMAC_SHA2_384_192 [RFC4868]",
                "HMAC_SHA2_512_256": "HMAC_SHA2_512_256 [RFC4868]"}
_ESP_INTEG = {"HMAC_MD5_96": "HMAC-MD5-96 [RFC2403]", "HMAC_SHA1_96": "HMAC-SHA-1-96 [RFC2404]",
              "HMAC_SHA2_256_128": "HMAC-SHA-256-128 [RFC4868]", "HMAC_SHA2_384_192": "HMAC-SHA-384-192 [RFC4868]",
              "HMAC_SHA2_512_256": "HMAC-SHA-512-256 [RFC4868]"}


def ikev2_encryption(proposal: str) -> str:
    name, bits, _ = split_proposal(proposal)
    if name == "AES_CBC" and bits:
        return f"AES-CBC-{bits} [RFC3602]"
    if name.startswith("AES_GCM_") and bits:
        return f"AES-GCM-{bits} with {name.rsplit('_', 1)[1]} octet ICV [RFC5282]"
    if name == "3DES_CBC":
        return "3DES [RFC2451]"
    raise UnknownAlgorithm(proposal)


def _integrity(proposal: str, names: dict[str, str], aead: str) -> str:
    """The integrity algorithm's name in one of Wireshark's tables; `aead` when the cipher has none."""
    integ = split_proposal(proposal)[2]
    if integ is None:
        return aead
    if integ not in names:
        raise UnknownAlgorithm(proposal)
    return names[integ]


def ikev2_integrity(proposal: str) -> str:
    return _integrity(proposal, _IKEV2_INTEG, "NONE [RFC4306]")


def esp_encryption(proposal: str) -> str:
    name = split_proposal(proposal)[0]
    if name == "AES_CBC":
        return "AES-CBC [RFC3602]"
    if name.startswith("AES_GCM_"):
        return f"AES-GCM with {name.rsplit('_', 1)[1]} octet ICV [RFC4106]"
    names = {"3DES_CBC": "TripleDES-CBC [RFC2451]", "DES_CBC": "DES-CBC [RFC2405]", "NULL": "NULL"}
    if name not in names:
        raise UnknownAlgorithm(proposal)
    return names[name]


def esp_authentication(proposal: str) -> str:
    return _integrity(proposal, _ESP_INTEG, "NULL")


def _q(text: str) -> str:
    return f'"{text}"'


def ikev2_row(k: IkeKeys) -> str:
    return ",".join([k.spi_i, k.spi_r, k.sk_ei, k.sk_er, _q(ikev2_encryption(k.proposal)), k.sk_ai, k.sk_ar,
                     _q(ikev2_integrity(k.proposal))])


def ikev1_row(k: IkeKeys) -> str:
    return ",".join([k.spi_i, k.ka])


def esp_row(k: EspKeys) -> str:
    return ",".join([_q("IPv4"), _q(k.src), _q(k.dst), _q("0x" + k.spi), _q(esp_encryption(k.proposal)),
                     _q("0x" + k.encr_key), _q(esp_authentication(k.proposal)),
                     _q("0x" + k.integ_key if k.integ_key else "")])


@dataclass(frozen=True)
class KeyTables:
    """The rows of the three tables, each SA once (both gateways log the keys of a shared SA)."""
    ikev2_decryption_table: tuple[str, ...]
    ikev1_decryption_table: tuple[str, ...]
    esp_sa: tuple[str, ...]

    def rows(self, table: str) -> tuple[str, ...]:
        return getattr(self, table)


def tables(records: list[IkeKeys | EspKeys]) -> KeyTables:
    ike: dict[tuple[int, str, str], str] = {}
    esp: dict[tuple[str, str], str] = {}
    for r in records:
        try:
            if isinstance(r, IkeKeys):
                ike[(r.version, r.spi_i, r.spi_r)] = ikev2_row(r) if r.version == 2 else ikev1_row(r)
            else:
                esp[(r.spi, r.dst)] = esp_row(r)
        except UnknownAlgorithm:
            continue  # an algorithm Wireshark cannot decrypt: no row rather than a wrong one
    return KeyTables(tuple(v for (ver, *_), v in ike.items() if ver == 2),
                     tuple(v for (ver, *_), v in ike.items() if ver == 1), tuple(esp.values()))


def read_records(gateway_dirs: list[Path]) -> list[IkeKeys | EspKeys]:
    out: list[IkeKeys | EspKeys] = []
    for d in gateway_dirs:
        path = d / KEYS_FILE
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    out.append(from_json(json.loads(line)))
                except (ValueError, TypeError):
                    continue  # a line cut short while the recorder wrote it
    return out


def write_tables(kt: KeyTables, directory: Path) -> Path:
    """DIR/wireshark/: a Wireshark configuration folder holding the three tables and the one
    preference that turns ESP decryption on. Files of mode 0600 (session keys)."""
    conf = directory / "wireshark"
    conf.mkdir(mode=0o700, parents=True, exist_ok=True)
    for table in TABLES:
        write_private(conf / table, "".join(row + "\n" for row in kt.rows(table)))
    write_private(conf / "preferences", "".join(f"{k}: {v}\n" for k, v in PREFERENCES.items()))
    return conf


def tshark_options(kt: KeyTables) -> list[str]:
    """The same tables as tshark -o options, for a command line that needs no configuration folder."""
    opts = [o for k, v in PREFERENCES.items() for o in ("-o", f"{k}:{v}")]
    for table in TABLES:
        for row in kt.rows(table):
            opts += ["-o", f"uat:{table}:{row}"]
    return opts


def how_to_open(kt: KeyTables, conf: Path, pcaps: list[Path]) -> list[str]:
    first = str(pcaps[0]) if pcaps else "FILE.pcap"
    return [
        f"Wireshark: copy {', '.join(TABLES)} and preferences from {conf}/ into your profile "
        "(~/.config/wireshark/), or start it with WIRESHARK_CONFIG_DIR=" + shlex.quote(str(conf)) + ".",
        "tshark: " + shlex.join(["tshark", "-r", first, *tshark_options(kt)]),
    ]

