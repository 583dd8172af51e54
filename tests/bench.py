"""`make bench`: time `up` and `down` of the default plan (median of 5) and of a generated 10-VNet
full mesh, and the memory of one gateway daemon. Writes bench-results.json and prints a table."""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def mesh(n: int) -> str:
    lines = ["lab: bench-mesh", "vnets:"]
    for i in range(n):
        lines += [f"  V{i}:", "    location: East US", f"    address_space: [10.{i}.0.0/16]",
                  f"    subnets: {{default: 10.{i}.0.0/24}}", f"    gateway_subnet: 10.{i}.255.0/27",
                  "    gateway: {type: DynamicRouting, sku: Standard}"]
    lines.append("local_sites:")
    lines += [f"  S{i}: {{address_space: [10.{i}.0.0/16]}}" for i in range(n)]
    lines.append("connections:")
    lines += [f"  - {{vnet: V{i}, local_site: S{j}, shared_key: Bench{min(i, j)}x{max(i, j)}}}"
              for i in range(n) for j in range(n) if i != j]
    return "\n".join(lines) + "\n"


def run(*argv: str) -> float:
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "emulator", *argv], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"vnetlab {' '.join(argv)} failed ({res.returncode}):\n{res.stderr}")
    return time.monotonic() - start


def rss_kb(lab: str) -> list[int]:
    journal = Path(os.environ["VNETLAB_STATE_DIR"], lab, "resources.jsonl").read_text().splitlines()
    pids = [json.loads(line)["pid"] for line in journal if '"process"' in line]
    return [int(next(l for l in Path(f"/proc/{p}/status").read_text().splitlines()
                     if l.startswith("VmRSS")).split()[1]) for p in pids]


def main() -> None:
    os.environ["VNETLAB_STATE_DIR"] = tempfile.mkdtemp(prefix="vnetlab-bench-")
    results: dict = {}
    ups, downs = [], []
    for _ in range(5):
        ups.append(run("up", "--name", "bench-default"))
        rss = rss_kb("bench-default")
        downs.append(run("down", "--name", "bench-default"))
    results["default_up_s_median"] = round(statistics.median(ups), 3)
    results["default_down_s_median"] = round(statistics.median(downs), 3)
    results["charon_rss_mb_max"] = round(max(rss) / 1024, 1)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        fh.write(mesh(10))
    results["mesh10_up_s"] = round(run("up", fh.name), 3)
    results["mesh10_charon_rss_mb_max"] = round(max(rss_kb("bench-mesh")) / 1024, 1)
    results["mesh10_down_s"] = round(run("down", "--name", "bench-mesh"), 3)
    os.unlink(fh.name)
    (ROOT / "bench-results.json").write_text(json.dumps(results, indent=2) + "\n")
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    try:
        main()
    finally:  # a failed run leaves no lab behind (down also removes the emptied state directory)
        subprocess.run([sys.executable, "-m", "emulator", "down", "--all"], capture_output=True)
