from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLANS = ROOT / "configs" / "plans"
DATA = Path(__file__).resolve().parent / "data"
FIXTURES = DATA / "netcfg"  # copies of shared/fixtures/netcfg (see SOURCES.md there)


@pytest.fixture
def run_cli(capsys):
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    from emulator.cli import main

    def run(*argv: str):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse
            code = exc.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
