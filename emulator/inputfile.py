"""Reading a user's input file without trusting it: a regular file only (a FIFO would block and a
device never ends), read no further than the size cap, decoded as UTF-8 or, with its byte-order
mark, UTF-16 (what PowerShell's Get-AzureVNetConfig may write)."""

from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path

from .problems import UsageError

MAX_INPUT_BYTES = 1_000_000


def read_capped(path: Path, what: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO must not wait for a writer
    except FileNotFoundError:
        raise UsageError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
            raise UsageError(f"{path}: is {kind}; give a {what} (a regular file)")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(MAX_INPUT_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_INPUT_BYTES:
        raise UsageError(f"{path}: larger than {MAX_INPUT_BYTES:,} bytes; a {what} is far smaller, refused")
    return data


def decode(data: bytes, path: Path, what: str) -> str:
    for bom, codec in ((codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"), (codecs.BOM_UTF8, "utf-8-sig")):
        if data.startswith(bom):
            break
    else:
        codec = "utf-8"
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: the {what} is not {codec.upper().replace('-SIG', '')} text (byte {exc.start}); "
                         "save it as UTF-8 or UTF-16 with a byte-order mark") from None
