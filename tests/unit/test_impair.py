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
