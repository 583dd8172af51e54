"""Path conditions without root: the nftables rules they become, and their validation."""

import pytest

from emulator.impair import nft_script
from emulator.model import PathConditions
from emulator.plan import parse_path_conditions
from emulator.problems import UsageError


def test_a_clean_path_only_removes_the_table():
    assert nft_script(PathConditions()) == "table inet vnetlab_path\ndelete table inet vnetlab_path\n"


def test_block_and_loss_drop_both_ways_on_the_backbone_link_only():
    script = nft_script(PathConditions(loss=5.5, block=frozenset({"esp", "ike"})))
    for side, hook in (('iifname "bb"', "hook input"), ('oifname "bb"', "hook output")):
        assert hook in script
        assert f"{side} udp sport 500 counter drop" in script and f"{side} udp dport 500 counter drop" in script
        assert f"{side} meta l4proto esp counter drop" in script
        assert f"{side} numgen random mod 10000 < 550 counter drop" in script
    assert "4500" not in script  # natt not blocked
    assert script.startswith("table inet vnetlab_path\ndelete table inet vnetlab_path\n")


def test_command_line_conditions_are_checked_like_the_plan():
    assert parse_path_conditions({"mtu": 1400, "block": ["natt"]}, "--vnet X") == PathConditions(
        mtu=1400, block=frozenset({"natt"}))
    with pytest.raises(UsageError) as exc:
        parse_path_conditions({"mtu": 10, "loss": 300, "block": ["dns"]}, "--vnet TestVNet1")
    text = str(exc.value)
    assert text.startswith("--vnet TestVNet1: ")
    assert "mtu: 10 is not valid: give a whole number from 576 to 9000" in text
    assert "loss: 300 is not valid: give a percentage from 0 to 100" in text
    assert "'dns' is not valid" in text


def test_conditions_describe_themselves():
    assert PathConditions().describe() == "clean"
    assert PathConditions(mtu=1400, loss=5, delay_ms=30, jitter_ms=5, block=frozenset({"natt", "esp"})).describe() == \
        "mtu 1400, loss 5%, delay 30 ms ± 5 ms, blocks esp, natt"


def test_retries_make_a_false_failure_under_loss_rarer_than_one_in_a_million_and_stay_bounded():
    from emulator.verify import MAX_RETRIES, retries_for

    assert retries_for(0) == 0
    for loss in (0.5, 1, 5):
        n = retries_for(loss) + 1
        assert (1 - (1 - loss / 100) ** 4) ** n <= 1e-6 < (1 - (1 - loss / 100) ** 4) ** (n - 1)
    assert retries_for(50) == retries_for(100) == MAX_RETRIES


def test_the_backbone_judge_knows_a_fragmented_esp_in_udp_packet_from_clear_traffic():
    """A gateway behind a small MTU fragments its ESP-in-UDP; only the first fragment has ports."""
    from scapy.layers.inet import IP, UDP, fragment
    from scapy.packet import Raw

    from emulator.workers.capture import classify, first_fragments

    esp = IP(src="203.0.113.3", dst="203.0.113.1", id=7) / UDP(sport=4500, dport=4500) / Raw(b"\x00\x00\x10\x01" + bytes(1500))
    clear = IP(src="203.0.113.3", dst="203.0.113.1", id=8) / UDP(sport=53, dport=53) / Raw(bytes(1500))
    packets = [IP(bytes(f)) for f in fragment(esp, 1000) + fragment(clear, 1000)]
    found = first_fragments(packets)
    assert [classify(p, found) for p in packets] == ["esp", "esp", "other", "other"]
    assert classify(packets[1]) == "other"  # a later fragment alone proves nothing


def test_the_backbone_judge_knows_the_labs_private_networks():
    from ipaddress import ip_network

    from emulator.workers.capture import inside_test

    inside = inside_test([ip_network(f"10.{100 + i // 256}.{i % 256}.0/24") for i in range(300)]
                         + [ip_network("172.16.0.0/12")])
    assert inside("10.100.7.4") and inside("10.101.43.200") and inside("172.31.0.1")
    assert not inside("10.101.44.1") and not inside("203.0.113.1") and not inside("198.18.0.3")
    assert inside("10.100.7.4")  # asked again: the same answer, from memory
