"""Where labs keep their state, and what `down` may remove: only directories vnetlab made. An
empty $VNETLAB_STATE_DIR once made the current directory the state base, and `down --all` removed
every directory in it (a source checkout, .git included)."""

import pytest

from emulator import lab as labmod
from emulator.problems import UsageError
from netns.registry import MARKER, Registry


@pytest.mark.parametrize("value", ["", "relative/dir", "."])
def test_an_empty_or_relative_state_dir_is_refused(monkeypatch, value):
    monkeypatch.setenv("VNETLAB_STATE_DIR", value)
    with pytest.raises(UsageError, match="VNETLAB_STATE_DIR.*absolute"):
        labmod.state_base()


def test_only_directories_vnetlab_made_are_labs_and_only_those_are_removed(monkeypatch, tmp_path):
    monkeypatch.setenv("VNETLAB_STATE_DIR", str(tmp_path))
    foreign = tmp_path / "project"
    (foreign / ".git").mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    made = Registry.create(tmp_path / "mylab")
    assert (made.directory / MARKER).exists() and oct(made.directory.stat().st_mode & 0o777) == "0o700"
    assert labmod.list_labs_any() == ["mylab"]
    refused = Registry(foreign).teardown()
    assert refused and "left alone" in refused[0] and (foreign / "notes.txt").read_text() == "mine"
    assert Registry(made.directory).teardown() == [] and not made.directory.exists()
    assert foreign.is_dir() and (foreign / ".git").is_dir()
