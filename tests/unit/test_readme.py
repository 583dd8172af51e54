"""The README stays true: its CLI reference is the real --help, its commands are all run."""

from tests.readme_tools import README, cli_reference, other_blocks, readme_block, runnable_blocks


def test_cli_reference_is_current():
    assert readme_block(README.read_text()) == cli_reference(), "run: python -m tests.readme_tools"


def test_every_vnetlab_command_is_in_a_runnable_block():
    text = README.read_text()
    assert runnable_blocks(text)
    for block in other_blocks(text):
        for line in block.splitlines():
            assert not line.lstrip().startswith(("vnetlab ", "sudo vnetlab")), \
                f"README command outside a '```sh test' block, so no test runs it: {line}"


def test_readme_opens_with_the_two_commands():
    text = README.read_text()
    head = text[:text.index("## The classic walkthrough")]
    assert "make lab" in head and "make test" in head
