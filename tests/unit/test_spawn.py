"""Every wait for a starting process has an end (netns/spawn.wait_for_word): CI once saw `up`
hang past 60 s after a Ctrl-C, and three of its waits for a helper's first words had none."""

import os
import subprocess
import sys
import time

import pytest

from netns.spawn import wait_for_word


def _run(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)


def test_the_word_is_found_also_after_other_words_in_one_write():
    proc = _run("import sys, time; sys.stdout.write('warming up\\nready\\n'); sys.stdout.flush(); time.sleep(5)")
    try:
        assert wait_for_word(proc.stdout.fileno(), b"ready\n", 10) == (True, "warming up\nready\n")
    finally:
        proc.kill()
        proc.wait()


def test_a_process_that_exits_without_the_word_ends_the_wait_at_once():
    proc = _run("print('no luck')")
    started = time.monotonic()
    assert wait_for_word(proc.stdout.fileno(), b"ready\n", 30) == (False, "no luck\n")
    assert time.monotonic() - started < 10
    proc.wait()


def test_a_silent_process_ends_the_wait_at_its_deadline():
    proc = _run("import time; time.sleep(30)")
    try:
        started = time.monotonic()
        assert wait_for_word(proc.stdout.fileno(), b"ready\n", 0.5) == (False, "")
        assert 0.5 <= time.monotonic() - started < 10
    finally:
        proc.kill()
        proc.wait()


def test_a_line_written_in_parts_is_waited_for_to_its_end():
    """tcpdump 4.99 writes "listening on any" and ", link-type …\n" separately; returning after the
    first part, the caller closed the pipe and the second write killed tcpdump (SIGPIPE)."""
    proc = _run("import os, time; os.write(1, b'tcpdump: listening on any'); time.sleep(0.3); "
                "os.write(1, b', link-type LINUX_SLL2\\n'); time.sleep(5)")
    try:
        assert wait_for_word(proc.stdout.fileno(), b"listening on", 10) == (
            True, "tcpdump: listening on any, link-type LINUX_SLL2\n")
    finally:
        proc.kill()
        proc.wait()


def test_a_pipe_numbered_past_1024_is_waited_for():
    """A process with over 1,024 open files (at 1,000 gateways) gets descriptors that select()
    refuses ("filedescriptor out of range"): the wait polls."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1600:
        pytest.skip(f"the hard limit of open files ({hard}) is below 1,600")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1600), hard))
    r, w = os.pipe()
    high = os.dup2(r, 1500)
    try:
        os.write(w, b"ready\n")
        assert wait_for_word(high, b"ready", 5) == (True, "ready\n")
    finally:
        for fd in (r, w, high):
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
