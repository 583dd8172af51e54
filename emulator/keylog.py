"""Session keys out of charon's own log, for Wireshark's key tables and for `vnetlab trace`.

Debian's strongSwan has no save-keys plugin, but charon logs every key it derives at level 4
(`ike 4`, `chd 4`), and the IKE SPIs at `mgr 2`. Each gateway writes that log into a FIFO
(workers/keylog.py reads it): the same log level also prints the IKEv2 pre-shared key, so the
raw text never reaches a disk. This parser keeps only the lines it names below; everything
else, the pre-shared key included, is dropped as it goes by.

The parser follows one charon's log. Threads interleave, so state is kept per IKE_SA (its
unique id, from the `<conn|id>` prefix) and per thread (a message is handled by one thread from
"parsed …" to the SAs it installs).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

# the lines that matter, after the "TT[GRP] <conn|uid> " prefix
_PREFIX = re.compile(r"^(\d+)\[(\w+)\] (?:<(?:([^|>]*)\|)?(\d+)> )?(.*)$")
_DUMP_HEAD = re.compile(r"^(.+?) => (\d+) bytes @ 0x[0-9a-f]+$")
_DUMP_LINE = re.compile(r"^ *\d+: ((?:[0-9A-F]{2} ){1,16})")
_CHECKIN = re.compile(r"^checkin IKEv([12]) SA (.+)\[(\d+)\] with SPIs ([0-9a-f]{16})_i ([0-9a-f]{16})_r$")
_PROPOSAL = re.compile(r"^selected proposal: (IKE|ESP):(\S+)$")
_PARSED = re.compile(r"^parsed (\S+) (request|response) ")
_CHILD = re.compile(r"^CHILD_SA (.+)\{\d+\} state change: CREATED => INSTALLING$")
_ADDING = re.compile(r"^(adding|registering) (inbound|outbound) ESP SA$")
_SA_LINE = re.compile(r"^ +SPI 0x([0-9a-f]{8}), src (\S+) dst (\S+)$")
# an SA closed by a DELETE carries its counts; one that expired (IKEv1's rekeyed SAs) does not: its
# peer's line, matched by SPI, does (status.closed_bytes)
_CLOSING = re.compile(r"^closing (?:expired )?CHILD_SA (.+)\{\d+\} with SPIs ([0-9a-f]{8})_i(?: \((\d+) bytes\))? "
                      r"([0-9a-f]{8})_o(?: \((\d+) bytes\))?")

# the key dumps kept, by their label in charon's log; every other dump is skipped unread
IKE_KEYS = {"Sk_ei secret": "sk_ei", "Sk_er secret": "sk_er", "Sk_ai secret": "sk_ai", "Sk_ar secret": "sk_ar",
            "encryption key Ka": "ka"}
CHILD_KEYS = {"encryption initiator key": "encr_i", "encryption responder key": "encr_r",
              "integrity initiator key": "integ_i", "integrity responder key": "integ_r"}


@dataclass(frozen=True)
class IkeKeys:
    """One IKE_SA's keys: what Wireshark's ikev2_decryption_table / ikev1_decryption_table need."""
    kind = "ike"
    gateway: str
    conn: str
    version: int
    spi_i: str  # hex, as on the wire
    spi_r: str
    proposal: str  # strongSwan's name, e.g. AES_GCM_16_256/PRF_HMAC_SHA2_256/MODP_1024
    sk_ei: str = ""
    sk_er: str = ""
    sk_ai: str = ""
    sk_ar: str = ""
    ka: str = ""  # IKEv1: the phase 1 encryption key

    def to_json(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class EspKeys:
    """One direction of one CHILD_SA: a line of Wireshark's esp_sa table."""
    kind = "esp"
    gateway: str
    conn: str
    child: str
    spi: str  # 8 hex digits
    src: str
    dst: str
    proposal: str  # e.g. AES_GCM_16_256/NO_EXT_SEQ or AES_CBC_256/HMAC_SHA1_96/NO_EXT_SEQ
    encr_key: str
    integ_key: str = ""

    def to_json(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class ClosedSa:
    """A CHILD_SA's final counters, logged by charon as it closes it (a rekey's old SA included):
    what makes the byte counters of `status` cumulative. Not a secret."""

    gateway: str
    child: str
    spi_in: str
    bytes_in: int
    spi_out: str
    bytes_out: int

    def to_json(self) -> dict:
        return {"kind": "closed", **asdict(self)}


@dataclass
class _Ike:
    conn: str = ""
    version: int = 0
    spi_i: str = ""
    spi_r: str = ""
    proposal: str = ""
    esp_proposal: str = ""  # the last one selected: IKEv1's responder selects it one message before installing
    keys: dict[str, str] = field(default_factory=dict)
    emitted: tuple[str, str, str] | None = None


@dataclass
class _Thread:
    dump: tuple[str, int] | None = None  # (field to fill, bytes still to read) while in a kept dump
    skipping: bool = False  # inside a dump that is not kept (the pre-shared key among them)
    buffer: bytearray = field(default_factory=bytearray)
    initiator: bool = False  # whether the message this thread handles last was a response to us
    ike_proposal: str = ""
    esp_proposal: str = ""
    child: str = ""
    conn: str = ""
    child_keys: dict[str, str] = field(default_factory=dict)
    ike_keys: dict[str, str] = field(default_factory=dict)  # derived, not yet tied to an SA's SPIs
    pending: str = ""  # "inbound" / "outbound" after an "adding … ESP SA" line


class KeyLogParser:
    """Feed it charon's log lines; it returns the keys each line completes."""

    def __init__(self, gateway: str):
        self.gateway = gateway
        self.ikes: dict[int, _Ike] = {}
        self.threads: dict[str, _Thread] = {}
        self.esp_seen: set[tuple[str, str]] = set()

    def feed(self, line: str) -> list[IkeKeys | EspKeys | ClosedSa]:
        m = _PREFIX.match(line.rstrip("\n"))
        if not m:
            return []
        tid, _group, conn, uid, text = m.groups()
        th = self.threads.setdefault(tid, _Thread())
        if th.dump or th.skipping:
            d = _DUMP_LINE.match(text)
            if d:
                if th.dump:
                    th.buffer += bytes.fromhex(d.group(1))
                    name, size = th.dump
                    if len(th.buffer) >= size:
                        th.dump = None
                        self._dumped(th, name, bytes(th.buffer[:size]).hex())
                return []
            th.dump, th.skipping = None, False
        head = _DUMP_HEAD.match(text)
        if head:
            label, size = head.group(1), int(head.group(2))
            name = IKE_KEYS.get(label) or CHILD_KEYS.get(label)
            th.buffer = bytearray()
            if name and size:
                th.dump = (name, size)
            else:
                th.skipping = True
            return []
        return self._line(th, conn, int(uid) if uid else None, text)

    def _line(self, th: _Thread, conn: str | None, uid: int | None, text: str) -> list[IkeKeys | EspKeys | ClosedSa]:
        if (c := _CHECKIN.match(text)) is not None:
            number = int(c.group(3))
            ike = self.ikes.setdefault(number, _Ike())
            ike.version, ike.conn, ike.spi_i, ike.spi_r = int(c.group(1)), c.group(2), c.group(4), c.group(5)
            if th.ike_keys:  # keys this thread derived belong to the SA it checks in next: a rekey
                ike.keys, th.ike_keys = th.ike_keys, {}  # derives the new SA's keys under the old SA's name
                ike.proposal = th.ike_proposal or ike.proposal
            return self._ike_ready(number)
        if (p := _PROPOSAL.match(text)) is not None:
            if p.group(1) == "IKE":
                th.ike_proposal = p.group(2)
                if uid is not None:
                    self.ikes.setdefault(uid, _Ike()).proposal = p.group(2)
            else:
                th.esp_proposal = p.group(2)
                if uid is not None:
                    self.ikes.setdefault(uid, _Ike()).esp_proposal = p.group(2)
            return []
        if (p := _PARSED.match(text)) is not None:  # a new message for this thread: forget the last one's
            th.initiator = p.group(2) == "response"
            th.ike_proposal = th.esp_proposal = ""  # (a responder derives IKE keys just before this line)
            return []
        if (c := _CHILD.match(text)) is not None:
            th.child, th.conn, th.child_keys = c.group(1), conn or "", {}
            if not th.esp_proposal and uid is not None and uid in self.ikes:
                th.esp_proposal = self.ikes[uid].esp_proposal
            return []
        if (a := _ADDING.match(text)) is not None:
            th.pending = a.group(2)
            return []
        if th.pending and (s := _SA_LINE.match(text)) is not None:
            direction, th.pending = th.pending, ""
            return self._esp(th, direction, *s.groups())
        if (c := _CLOSING.match(text)) is not None:
            child, spi_in, bytes_in, spi_out, bytes_out = c.groups()
            return [ClosedSa(self.gateway, child, spi_in, int(bytes_in or 0), spi_out, int(bytes_out or 0))]
        return []

    def _dumped(self, th: _Thread, name: str, value: str) -> None:
        if name in CHILD_KEYS.values():
            th.child_keys[name] = value
            return
        th.ike_keys[name] = value

    def _ike_ready(self, uid: int) -> list[IkeKeys | EspKeys | ClosedSa]:
        ike = self.ikes[uid]
        aead = "GCM" in ike.proposal or "CCM" in ike.proposal
        needed = ("ka",) if ike.version == 1 else ("sk_ei", "sk_er") if aead else ("sk_ei", "sk_er", "sk_ai", "sk_ar")
        if not ike.version or not ike.proposal or int(ike.spi_r or "0", 16) == 0 or any(k not in ike.keys for k in needed):
            return []
        record = IkeKeys(self.gateway, ike.conn, ike.version, ike.spi_i, ike.spi_r, ike.proposal,
                         **{k: ike.keys[k] for k in needed})
        if ike.emitted == (ike.spi_i, ike.spi_r, ike.conn):
            return []
        ike.emitted = (ike.spi_i, ike.spi_r, ike.conn)  # again once a responder's SA has its name
        return [record]

    def _esp(self, th: _Thread, direction: str, spi: str, src: str, dst: str) -> list[IkeKeys | EspKeys | ClosedSa]:
        if (spi, dst) in self.esp_seen or "encr_i" not in th.child_keys:
            return []  # "adding outbound" after "registering outbound": the same SA, already written
        # the initiator of this exchange receives with the responder's keys, and sends with its own
        ours = "i" if th.initiator == (direction == "outbound") else "r"
        self.esp_seen.add((spi, dst))
        return [EspKeys(self.gateway, th.conn, th.child, spi, src, dst, th.esp_proposal,
                        th.child_keys.get(f"encr_{ours}", ""), th.child_keys.get(f"integ_{ours}", ""))]


def from_json(record: dict) -> IkeKeys | EspKeys:
    data = {k: v for k, v in record.items() if k != "kind"}
    return IkeKeys(**data) if record.get("kind") == "ike" else EspKeys(**data)
