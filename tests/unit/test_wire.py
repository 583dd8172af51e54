"""Pure parts of issue 11: keys out of charon's log, Wireshark's table formats, the IKE trace.

The fixtures are real: charon's level-4 logs of the default plan (IKEv2: a CHILD_SA rekey and an
IKE_SA rekey; IKEv1: a Quick Mode rekey), and IKE recordings with the keys the lab logged."""

import io
import json
from pathlib import Path

import pytest

from emulator.keylog import ClosedSa, EspKeys, IkeKeys, KeyLogParser, from_json
from emulator.keytables import (esp_authentication, esp_encryption, esp_row, ikev1_row, ikev2_encryption,
                                ikev2_integrity, ikev2_row, tables, tshark_options)
from emulator.trace import Tracer, read_pcap

DATA = Path(__file__).parent.parent / "data"
PSK = b"A1b2C3D4"


def parse(path: Path, gateway: str, kinds: tuple = (IkeKeys, EspKeys)) -> list:
    parser = KeyLogParser(gateway)
    return [r for line in path.read_text().splitlines() for r in parser.feed(line) if isinstance(r, kinds)]


def test_closed_child_sas_keep_their_final_counters():
    line = ("12[IKE] <VNet1Local|1> closing CHILD_SA VNet1Local{1} with SPIs b1c72355_i (12348 bytes) 417ed693_o "
            "(840 bytes) and TS 10.41.0.0/16 === 10.11.0.0/16")
    assert KeyLogParser("TestVNet4").feed(line) == [ClosedSa("TestVNet4", "VNet1Local", "b1c72355", 12348, "417ed693", 840)]
    expired = ("09[IKE] <VNet4Local|1> closing expired CHILD_SA VNet4Local-1{1} with SPIs 1c29fe7a_i 0e85be3f_o and "
               "TS 10.11.0.0/16 === 10.41.0.0/16")  # no counts: its peer's line has them
    assert KeyLogParser("gw").feed(expired) == [ClosedSa("gw", "VNet4Local-1", "1c29fe7a", 0, "0e85be3f", 0)]


@pytest.fixture(scope="module")
def ikev2():
    return (parse(DATA / "keylog" / "ikev2-TestVNet1.log", "TestVNet1"),
            parse(DATA / "keylog" / "ikev2-TestVNet4.log", "TestVNet4"))


def test_the_log_holds_the_psk_and_the_records_do_not():
    log = (DATA / "keylog" / "ikev2-TestVNet1.log").read_text()
    assert "41 31 62 32 43 33 44 34" in log  # level 4 prints the pre-shared key: why the log is a FIFO
    for gw in ("TestVNet1", "TestVNet4"):
        for r in parse(DATA / "keylog" / f"ikev2-{gw}.log", gw):
            text = json.dumps(r.to_json())
            assert PSK.decode() not in text and PSK.hex() not in text.lower()


def test_ikev2_keys_of_both_sides_agree_through_rekeys(ikev2):
    one, four = ikev2
    ike1 = {(r.spi_i, r.spi_r): r for r in one if isinstance(r, IkeKeys)}
    ike4 = {(r.spi_i, r.spi_r): r for r in four if isinstance(r, IkeKeys)}
    assert len(ike1) == 2 and ike1.keys() == ike4.keys()  # the first IKE_SA and its rekey
    for spis, r in ike1.items():
        assert (r.sk_ei, r.sk_er) == (ike4[spis].sk_ei, ike4[spis].sk_er)
        assert r.version == 2 and r.proposal.startswith("AES_GCM_16_256") and len(bytes.fromhex(r.sk_ei)) == 36
    esp1 = {(r.spi, r.dst): r for r in one if isinstance(r, EspKeys)}
    esp4 = {(r.spi, r.dst): r for r in four if isinstance(r, EspKeys)}
    assert len(esp1) == 4 and esp1.keys() == esp4.keys()  # two CHILD_SAs, each direction
    for sa, r in esp1.items():
        assert r.encr_key == esp4[sa].encr_key, sa  # who initiated decides which derived key is whose
        assert r.src != r.dst and r.proposal.startswith("AES_GCM_16_256")
    assert {r.conn for r in esp1.values()} == {"VNet4Local"}


def test_ikev1_phase1_key_and_quick_mode_keys():
    one = parse(DATA / "keylog" / "ikev1-TestVNet1.log", "TestVNet1")
    four = parse(DATA / "keylog" / "ikev1-TestVNet4.log", "TestVNet4")
    (k1,) = {r.spi_i: r for r in one if isinstance(r, IkeKeys)}.values()
    named = [r for r in four if isinstance(r, IkeKeys) and r.conn == "VNet1Local"]
    assert k1.version == 1 and k1.ka and named and named[-1].ka == k1.ka
    assert k1.proposal.startswith("AES_CBC_256/HMAC_SHA1_96")
    esp1 = {(r.spi, r.dst): r.encr_key for r in one if isinstance(r, EspKeys)}
    esp4 = {(r.spi, r.dst): r.encr_key for r in four if isinstance(r, EspKeys)}
    assert len(esp1) >= 4 and esp1 == esp4


def test_a_dump_cut_by_another_line_is_dropped_not_misread():
    p = KeyLogParser("gw")
    row = "12[IKE] <c|1>    0: 00 11 22 33 44 55 66 77 88 99 AA BB CC DD EE FF  ................"
    lines = ["12[CFG] <c|1> selected proposal: IKE:AES_GCM_16_128/PRF_HMAC_SHA2_256/MODP_2048",
             "12[IKE] <c|1> Sk_ei secret => 20 bytes @ 0x1", row,
             "12[IKE] <c|1> something else",  # the dump ends early: 16 of its 20 bytes
             "12[IKE] <c|1> Sk_er secret => 20 bytes @ 0x2", row, "12[IKE] <c|1>   16: 01 02 03 04  ....",
             "12[MGR] <c|1> checkin IKEv2 SA c[1] with SPIs 1111111111111111_i 2222222222222222_r"]
    assert [r for line in lines for r in p.feed(line)] == []  # no record with a half-read SK_ei
    whole = KeyLogParser("gw")
    lines[3:4] = ["12[IKE] <c|1>   16: 05 06 07 08  ...."]
    (record,) = [r for line in lines for r in whole.feed(line)]
    assert record.sk_ei == "00112233445566778899aabbccddeeff05060708"  # the same lines, the dump whole


def test_wireshark_names_and_rows():
    assert ikev2_encryption("AES_GCM_16_256/PRF_HMAC_SHA2_256/MODP_1024") == "AES-GCM-256 with 16 octet ICV [RFC5282]"
    assert ikev2_integrity("AES_GCM_16_256/PRF_HMAC_SHA2_256/MODP_1024") == "NONE [RFC4306]"
    assert ikev2_encryption("AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048") == "AES-CBC-128 [RFC3602]"
    assert ikev2_integrity("AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048") == "HMAC_SHA2_256_128 [RFC4868]"
    assert ikev2_encryption("3DES_CBC/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_1024") == "3DES [RFC2451]"
    assert esp_encryption("AES_GCM_16_256/NO_EXT_SEQ") == "AES-GCM with 16 octet ICV [RFC4106]"
    assert esp_authentication("AES_GCM_16_256/NO_EXT_SEQ") == "NULL"
    assert esp_encryption("3DES_CBC/HMAC_SHA1_96/NO_EXT_SEQ") == "TripleDES-CBC [RFC2451]"
    assert esp_authentication("AES_CBC_256/HMAC_SHA1_96/NO_EXT_SEQ") == "HMAC-SHA-1-96 [RFC2404]"
    ike = IkeKeys("g", "c", 2, "00" * 8, "11" * 8, "AES_GCM_16_128/PRF_HMAC_SHA2_256/MODP_1024", "aa" * 20, "bb" * 20)
    assert ikev2_row(ike) == (f"{'00' * 8},{'11' * 8},{'aa' * 20},{'bb' * 20},"
                              '"AES-GCM-128 with 16 octet ICV [RFC5282]",,,"NONE [RFC4306]"')
    assert ikev1_row(IkeKeys("g", "c", 1, "ab" * 8, "cd" * 8, "AES_CBC_256/HMAC_SHA1_96", ka="ee" * 32)) == \
        f"{'ab' * 8},{'ee' * 32}"
    esp = EspKeys("g", "c", "c", "c0ffee01", "203.0.113.1", "203.0.113.3", "AES_CBC_256/HMAC_SHA1_96/NO_EXT_SEQ",
                  "11" * 32, "22" * 20)
    assert esp_row(esp) == ('"IPv4","203.0.113.1","203.0.113.3","0xc0ffee01","AES-CBC [RFC3602]",'
                            f'"0x{"11" * 32}","HMAC-SHA-1-96 [RFC2404]","0x{"22" * 20}"')


def test_tables_keep_each_sa_once_and_skip_what_wireshark_cannot_decrypt(ikev2):
    one, four = ikev2
    kt = tables(one + four)
    assert len(kt.ikev2_decryption_table) == 2 and len(kt.esp_sa) == 4 and kt.ikev1_decryption_table == ()
    odd = EspKeys("g", "c", "c", "01020304", "a", "b", "CHACHA20_POLY1305_256/NO_EXT_SEQ", "00")
    assert tables([odd]).esp_sa == ()
    opts = tshark_options(kt)
    assert opts.count("-o") == 2 + 6 and "esp.enable_encryption_decode:TRUE" in opts


def trace(name: str) -> list:
    keys = [from_json(json.loads(line)) for line in (DATA / "trace" / f"{name}-keys.jsonl").read_text().splitlines()]
    tracer = Tracer(lambda: [k for k in keys if isinstance(k, IkeKeys)],
                    {"203.0.113.1": "TestVNet1", "203.0.113.3": "TestVNet4"})
    out = []
    with open(DATA / "trace" / f"{name}.pcap", "rb") as fh:
        for item in read_pcap(fh):
            if item is None:
                break
            m = tracer.message(*item)
            if m:
                out.append(m)
    return out


def test_trace_of_a_psk_mismatch_names_the_notify_and_prints_no_key():
    msgs = trace("gcm")
    kinds = [(m.exchange, m.response) for m in msgs]
    assert kinds[:4] == [("IKE_SA_INIT", False), ("IKE_SA_INIT", True), ("IKE_AUTH", False), ("IKE_AUTH", True)]
    assert ("CREATE_CHILD_SA", False) in kinds
    assert all(m.decrypted for m in msgs if m.exchange != "IKE_SA_INIT")
    last = msgs[-1]
    assert (last.exchange, last.response, last.notifies) == ("IKE_AUTH", True, ["AUTHENTICATION_FAILED"])
    assert last.line().endswith("IKE_AUTH response msg 1: N(AUTHENTICATION_FAILED)")
    assert any(p.startswith("TSi(10.11.0.0/16, 10.12.0.0/16)") for p in msgs[2].payloads)
    text = json.dumps([m.as_dict() for m in msgs]) + "".join(m.line() for m in msgs)
    for line in (DATA / "trace" / "gcm-keys.jsonl").read_text().splitlines():
        record = json.loads(line)
        for field in ("sk_ei", "sk_er", "encr_key"):
            if record.get(field):
                assert record[field] not in text


def test_trace_decrypts_cbc_with_hmac_and_refuses_a_forged_message():
    msgs = trace("cbc")
    assert any(m.exchange == "CREATE_CHILD_SA" and m.decrypted for m in msgs)
    assert all(m.decrypted for m in msgs if m.exchange != "IKE_SA_INIT")
    keys = [from_json(json.loads(line)) for line in (DATA / "trace" / "cbc-keys.jsonl").read_text().splitlines()]
    tracer = Tracer(lambda: [k for k in keys if isinstance(k, IkeKeys)], {})
    with open(DATA / "trace" / "cbc.pcap", "rb") as fh:
        packets = _all(fh)
    ts, pkt = packets[2]  # IKE_AUTH request
    raw = bytearray(bytes(pkt))
    raw[-20] ^= 0x01  # one bit of the ciphertext
    forged = type(pkt)(bytes(raw))
    assert tracer.message(ts, forged).decrypted is False


def _all(fh):
    out = []
    for item in read_pcap(fh):
        if item is None:
            return out
        out.append(item)


def test_read_pcap_waits_at_the_end_of_a_growing_file():
    data = (DATA / "trace" / "gcm.pcap").read_bytes()
    grow = io.BytesIO()
    reader = read_pcap(grow)
    assert next(reader) is None  # not even a header yet
    grow.write(data[:100])
    grow.seek(0)
    first = next(reader)
    assert first is None  # the header, and only part of the first record
    pos = grow.tell()
    grow.seek(0, io.SEEK_END)
    grow.write(data[100:])
    grow.seek(pos)
    got = [x for x in (next(reader) for _ in range(30)) if x is not None]
    assert len(got) == len(_all(open(DATA / "trace" / "gcm.pcap", "rb")))


def test_ikev1_trace_reads_main_and_quick_mode_and_shows_what_a_wrong_key_does():
    msgs = trace("ikev1-psk")
    first = msgs[:6]
    assert [m.exchange for m in first] == [f"Main Mode {i}/6" for i in range(1, 7)]
    assert first[4].payloads == ["ID(203.0.113.1)", "HASH", "N(INITIAL_CONTACT)"] and first[4].decrypted
    assert first[5].response and first[5].payloads == ["ID(203.0.113.3)", "HASH"]
    quick = [m for m in msgs if m.exchange == "Quick Mode"]
    assert quick and all(m.decrypted for m in quick)
    assert "ID(10.11.0.0/16)" in quick[0].payloads and "ID(10.41.0.0/16)" in quick[0].payloads
    # after one side was re-keyed: message 5 is readable only with the sender's key ...
    wrong = [m for m in msgs if m.exchange.startswith("Main Mode 5/6") and m.note]
    assert wrong and "only TestVNet1's key opens it" in wrong[0].note
    assert any(m.exchange.endswith("(retransmission)") for m in wrong)
    # ... and the responder, which read garbage, says so under its own key
    assert any("PAYLOAD_MALFORMED" in m.notifies and m.src_name == "TestVNet4" for m in msgs)


def test_up_does_not_load_the_trace_libraries():
    """`up` starts the IKE recorder through capture.py; scapy and cryptography (trace.py) cost 0.6 s
    to import and must wait until something reads the recording."""
    import subprocess
    import sys

    code = ("import sys, emulator.lab, emulator.capture, emulator.keytables, emulator.workers.keylog; "
            "print(sorted(m for m in ('scapy', 'cryptography') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
