"""Rewrite tests/golden from the example plans. Review the diff before committing it."""

from pathlib import Path

from emulator.plan import load_plan
from emulator.render import render_topology
from emulator.topology import build_topology

HERE = Path(__file__).resolve().parent
for plan_file in sorted((HERE.parent / "configs" / "plans").glob("*.yaml")):
    plan, _ = load_plan(plan_file)
    for r in render_topology(build_topology(plan), Path("/LAB"), "kernel"):
        for name, text in r.files.items():
            target = HERE / "golden" / plan_file.stem / r.gateway.name / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            print(target.relative_to(HERE.parent))
