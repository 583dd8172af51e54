"""Verify at scale without false failures (issue 13): a 30-VNet ring, every check must pass."""

import json
from collections import Counter

from tests.bench import ring


def test_ring_of_30_verifies_with_zero_failures(lab, tmp_path):
    plan = tmp_path / "ring30.yaml"
    plan.write_text(ring(30))
    up = lab.cli("up", str(plan), "--json", timeout=120)
    assert up.returncode == 0, up.stderr[-2000:]
    res = lab.cli("verify", "--name", "bench-ring30", "--json", timeout=180)
    data = json.loads(res.stdout)
    failed = [c for c in data["checks"] if not c["ok"]]
    assert not failed, failed[:5]
    kinds = Counter(c["kind"] for c in data["checks"])
    assert kinds["reach"] == 30 * 2 * 3  # each VNet to both neighbours, ICMP/TCP/UDP
    assert kinds["isolation"] == 30  # one per source host, covering every network it must not reach
    for c in data["checks"]:
        if c["kind"] == "isolation":
            assert len(c["covers"]) == 27
    assert res.returncode == 0
