"""`make test-kernel`: the lab tests on the kernel XFRM data plane, inside a Debian 12 guest.

This machine's kernel has no ESP, so the kernel data plane, which almost every user runs, would
otherwise never be tested. As strongSwan tests itself, a Debian guest built from packages boots
under qemu and runs the kernel-parametrised lab tests:
1. the root filesystem comes from Debian's packages (mmdebstrap: linux-image-amd64, and what
   scripts/install.sh names), turned into an ext4 image without loop devices (mkfs.ext4 -d); it is
   cached outside the work tree and rebuilt only when the package list changes;
2. qemu boots its kernel directly, with no network; the checkout is shared in over virtio-9p at
   the same path, so the host's venv (made with Debian's own /usr/bin/python3) runs unchanged;
3. KVM is tried first; a nested KVM guest can hang right after the firmware, or qemu can abort at
   once (a host CPU whose MSRs KVM refuses: "failed to set MSR 0x10a"), so a timeout on the guest's
   first line (a kernel message, or the init's "guest:"), or qemu's end before it, falls back to
   TCG emulation;
4. the guest runs pytest on the kernel tests and reports their summary and exit status on the
   serial console. A kernel test that skips there fails the run (VNETLAB_REQUIRE_KERNEL).
Exits 0 only when the tests ran and passed; 3 when the guest cannot be had, with the reason.
"""

from __future__ import annotations

import hashlib
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("VNETLAB_GUEST_CACHE", "/var/cache/vnetlab-guest"))
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
GUEST_EXTRA = ["linux-image-amd64", "kmod", "procps", "nftables", "python3", "iproute2"]
SELECTION = ["-v", "-m", "lab", "-k", "kernel"]
FIRST_LINE_TIMEOUT = 20.0  # seconds under KVM until the guest's first line (its kernel boots `quiet`)
RUN_TIMEOUT = 45 * 60
MARK = "VNETLAB-GUEST-EXIT="
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1bc")  # the firmware's and the console's escape codes

INIT = """#!/bin/sh
# PID 1 of the test guest: mount what the lab needs, share the checkout in, run the kernel tests.
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sys /sys
mountpoint -q /dev || mount -t devtmpfs dev /dev
mount -t tmpfs tmp /run; mount -t tmpfs tmp /tmp
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
modprobe -a 9pnet_virtio 9p esp4 xfrm_user xfrm4_tunnel tun sch_netem >/dev/null 2>&1
ip link set lo up
mkdir -p "$VNETLAB_SRC" && mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 src "$VNETLAB_SRC"
off() { sync; echo o > /proc/sysrq-trigger; sleep 60; }  # PID 1 must not exit before the power goes
cd "$VNETLAB_SRC" || { echo "VNETLAB-GUEST-EXIT=3"; off; }
echo "guest: kernel $(uname -r), $(nproc) CPUs"
VNETLAB_REQUIRE_KERNEL=1 PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \\
  .venv/bin/python -m pytest -p no:cacheprovider --color=no -rs $VNETLAB_PYTEST
echo "VNETLAB-GUEST-EXIT=$?"
off
"""


def fail(why: str, code: int = 3) -> None:
    print(f"make test-kernel: {why}", file=sys.stderr)
    raise SystemExit(code)


def packages() -> list[str]:
    text = (ROOT / "scripts" / "install.sh").read_text()
    names = [n for m in re.finditer(r'^(?:TEST_)?PACKAGES="([^"]*)"', text, re.S | re.M) for n in m.group(1).split()]
    return sorted(set(names) - {"graphviz", "make", "python3-pip"} | set(GUEST_EXTRA))


def image() -> Path:
    """The cached guest (rootfs.ext4, vmlinuz, initrd.img), built when missing."""
    pkgs = packages()
    key = hashlib.sha256(("\n".join(pkgs) + INIT + SOURCES.read_text()).encode()).hexdigest()[:16]
    where = CACHE / key
    if (where / "rootfs.ext4").exists():
        print(f"guest image: cached in {where}")
        return where
    for tool in ("mmdebstrap", "mkfs.ext4"):
        if shutil.which(tool) is None:
            fail(f"{tool} is missing: apt-get install mmdebstrap e2fsprogs (CI does in .ci/run)")
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="vnetlab-guest-", dir=CACHE.parent if CACHE.parent.exists() else None))
    try:
        rootfs = work / "rootfs"
        res = subprocess.run(["mmdebstrap", "--variant=minbase", "--mode=root", f"--include={','.join(pkgs)}",
                              "--dpkgopt=path-exclude=/usr/share/{doc,man,locale}/*", "bookworm", str(rootfs),
                              str(SOURCES)], capture_output=True, text=True)
        if res.returncode != 0:
            fail(f"building the guest's root filesystem failed:\n{res.stderr[-3000:]}")
        (rootfs / "vnetlab-guest-init").write_text(INIT)
        (rootfs / "vnetlab-guest-init").chmod(0o755)
        staged = work / "image"
        staged.mkdir()
        shutil.copy(next((rootfs / "boot").glob("vmlinuz-*")), staged / "vmlinuz")
        shutil.copy(next((rootfs / "boot").glob("initrd.img-*")), staged / "initrd.img")
        res = subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "vnetlab", "-d", str(rootfs), str(staged / "rootfs.ext4"),
                              "3G"], capture_output=True, text=True)
        if res.returncode != 0:
            fail(f"mkfs.ext4 failed: {res.stderr[-2000:]}")
        CACHE.mkdir(parents=True, exist_ok=True)
        for old in CACHE.iterdir():  # images of earlier package lists: only the current one is kept
            shutil.rmtree(old, ignore_errors=True)
        staged.rename(where)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"guest image: built in {time.monotonic() - started:.0f} s, cached in {where}")
    return where


def qemu(img: Path, accel: str) -> list[str]:
    pytest_args = " ".join([*SELECTION, *sys.argv[1:]])
    append = (f"root=/dev/vda rw console=ttyS0 panic=-1 init=/vnetlab-guest-init quiet loglevel=3 "
              f"VNETLAB_SRC={ROOT} VNETLAB_PYTEST=\"{pytest_args}\"")
    return ["qemu-system-x86_64", "-accel", "tcg,thread=multi" if accel == "tcg" else accel, "-cpu", "host" if accel == "kvm" else "max", "-smp", "2",
            "-m", "3072", "-nographic", "-no-reboot", "-nic", "none", "-kernel", str(img / "vmlinuz"),
            "-initrd", str(img / "initrd.img"), "-append", append,
            "-drive", f"file={img / 'rootfs.ext4'},if=virtio,format=raw,snapshot=on",
            "-virtfs", f"local,path={ROOT},mount_tag=src,security_model=none"]


def boot(img: Path, accel: str) -> int | None:
    """Run the guest; its exit mark's status, or None when KVM hung or failed before the guest's first line."""
    started = time.monotonic()
    proc = subprocess.Popen(qemu(img, accel), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    fd = proc.stdout.fileno()
    booted, status, buffered, summary = accel == "tcg", None, "", ""
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], 0.2)
            chunk = os.read(fd, 65536).decode(errors="replace") if ready else ""
            if ready and not chunk:
                break  # qemu closed its console: the guest is off
            buffered += chunk
            *lines, buffered = buffered.split("\n")
            for line in lines:
                line = ANSI.sub("", line).rstrip("\r")
                if "Linux version" in line or line.startswith(("guest:", "[")):
                    booted = True
                if line.startswith(MARK):
                    status = int(line[len(MARK):])
                elif re.match(r"=+ .*\d+ (passed|failed|error)", line.strip()):
                    summary = line.strip(" =")
                    print(f"  guest | {line}", flush=True)
                elif line.strip():
                    print(f"  guest | {line}", flush=True)
            elapsed = time.monotonic() - started
            if not booted and elapsed > FIRST_LINE_TIMEOUT:
                print(f"guest: no line from the guest after {FIRST_LINE_TIMEOUT:.0f} s under KVM (nested KVM hangs on this "
                      "machine kind): falling back to TCG emulation", flush=True)
                return None
            if elapsed > RUN_TIMEOUT:
                fail(f"the guest did not finish within {RUN_TIMEOUT // 60} minutes", 1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if not booted:
        print(f"guest: qemu ended under KVM before the guest's first line (exit {proc.returncode}): falling back "
              "to TCG emulation", flush=True)
        return None
    print(f"guest: ran {time.monotonic() - started:.0f} s under {accel.upper()}")
    if status is None:
        fail("the guest ended without reporting the tests' exit status (see its console above)", 1)
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)}
    if counts.get("skipped"):
        print(f"guest: {counts['skipped']} kernel test(s) skipped: a skip in the guest is a failure")
        status = status or 1
    if not counts.get("passed") and not counts.get("failed"):
        print("guest: no test ran")
        status = status or 1
    # one plain closing line for whoever reads this log
    print(f"kernel: {counts.get('passed', 0)} passed, {counts.get('failed', 0) + counts.get('error', 0)} failed"
          + (f", {counts['skipped']} skipped" if counts.get("skipped") else ""))
    return status


def main() -> None:
    if os.geteuid() != 0:
        fail("needs root (the guest image is built with mmdebstrap --mode=root, the lab tests need root)")
    if shutil.which("qemu-system-x86_64") is None:
        fail("qemu-system-x86_64 is missing: apt-get install qemu-system-x86 (CI does in .ci/run)")
    if not (ROOT / ".venv" / "bin" / "python").exists() or not os.path.realpath(
            ROOT / ".venv" / "bin" / "python").startswith("/usr/bin/"):
        fail("the guest runs the host's .venv, which must be made with Debian's /usr/bin/python3: make venv")
    img = image()
    status = None
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        status = boot(img, "kvm")
    if status is None:
        status = boot(img, "tcg")
    raise SystemExit(status)


if __name__ == "__main__":
    main()
