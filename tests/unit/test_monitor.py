"""The lab's helpers without daemons: the supervisor's loop (what counts toward its restart
limit), the monitor's wait for "go", and the key recorder's hand-off of the daemons' key logs."""

import threading
import time
from contextlib import contextmanager

from emulator.workers import monitor


def _loop(tmp_path, monkeypatch, restarted: list[bool], pauses: list[float] | None = None) -> int:
    """Run listen() against a daemon that never answers; `restarted` says, per round, whether the
    heal really restarted it. The round after the last one removes the lab. Returns the rounds run."""
    lab = tmp_path / "lab"
    gw = lab / "TestVNet1"
    gw.mkdir(parents=True)
    rounds = []

    @contextmanager
    def no_answer(directory, timeout=10.0):
        raise ConnectionError("not answering")
        yield

    def restart(gateway, directory, recorder):
        rounds.append(gateway)
        if len(rounds) == len(restarted):
            gw.rmdir()
            lab.rmdir()
        return restarted[len(rounds) - 1]

    monkeypatch.setattr(monitor.gateways, "session", no_answer)
    monkeypatch.setattr(monitor, "_restart", restart)
    monkeypatch.setattr(monitor.time, "sleep", lambda s: (pauses if pauses is not None else []).append(s))
    monitor.listen("TestVNet1", gw, monitor.Recorder(lab), threading.Barrier(1))
    return len(rounds)


def test_a_slow_daemon_is_not_counted_as_a_restart(tmp_path, monkeypatch):
    """A daemon that only answered slowly (its process still runs) must not use up the restart
    limit: after it, a real death is still healed."""
    rounds = monitor.RESTARTS_PER_MINUTE * 3
    assert _loop(tmp_path, monkeypatch, [False] * (rounds - 1) + [True]) == rounds


def test_a_daemon_killed_but_still_exiting_is_healed_a_moment_later_and_a_slow_one_is_backed_off(tmp_path,
                                                                                                    monkeypatch):
    """kill -9 of a charon: its threads take a moment to exit, and the heal first finds it still
    running. The next try must come within a tenth of a second (a fixed 1 s pause made every heal
    take 1.3 s instead of 0.25 s); a daemon that stays slow is asked ever less often, up to once a second."""
    pauses: list[float] = []
    _loop(tmp_path, monkeypatch, [False] * 8 + [True], pauses)
    assert pauses[0] <= 0.1 and pauses == sorted(pauses) and pauses[-1] == 1.0


def test_a_daemon_that_dies_after_every_start_is_left_down(tmp_path, monkeypatch):
    rounds = monitor.RESTARTS_PER_MINUTE * 3
    assert _loop(tmp_path, monkeypatch, [True] * rounds) == monitor.RESTARTS_PER_MINUTE


def test_a_daemon_that_runs_but_never_answers_is_restarted_once_it_has_been_silent_long_enough(tmp_path,
                                                                                                 monkeypatch):
    """strongSwan before 5.9.11 can deadlock a daemon that lives on (#566). The health watch
    restarts one whose socket takes connections but that answers nothing for WEDGED_AFTER_S; one
    that answers, or that is gone (its listener heals it), is left alone; one answer resets the clock."""
    lab = tmp_path / "lab"
    lab.mkdir()
    clock = [0.0]
    answers = {"Wedged": [False] * 30, "Fine": [True] * 30, "Gone": [None] * 30,
               "Flaky": [False, False, False, True] * 8}
    restarted = []

    def sleep(seconds):
        clock[0] += seconds
        if clock[0] >= 25 * monitor.HEALTH_EVERY_S:
            lab.rmdir()

    def check_alive(directory, timeout):
        said = answers[directory.name].pop(0)
        if said is not True:
            raise monitor.gateways.GatewayDown(directory, "No such file or directory" if said is None else "timed out",
                                               gone=said is None)

    monkeypatch.setattr(monitor.time, "sleep", sleep)
    monkeypatch.setattr(monitor.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(monitor.gateways, "check_alive", check_alive)
    monkeypatch.setattr(monitor, "_restart", lambda gw, d, r, silent_for: restarted.append((gw, silent_for)) or True)
    monitor.watch_health(lab, {name: tmp_path / name for name in answers}, monitor.Recorder(lab))
    assert [gw for gw, _ in restarted] == ["Wedged"] * (len(restarted)) and len(restarted) >= 2
    assert all(silent >= monitor.WEDGED_AFTER_S for _, silent in restarted)


def test_no_listener_thread_imports_before_the_main_thread_has_loaded_everything():
    """Lazy imports from several threads at once can fail half-way (a listener died of it in CI: no
    events, its gateway unsupervised). Every function of the supervisor that imports waits for
    `_loaded`, which the main thread sets once it has imported the heavy modules itself."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(monitor))
    for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name != "main"):
        imports = [n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
        if not imports:
            continue
        waits = [n for n in ast.walk(fn) if isinstance(n, ast.Call) and ast.unparse(n.func) == "_loaded.wait"]
        assert waits and min(w.lineno for w in waits) < min(i.lineno for i in imports), fn.name


def test_the_monitor_waits_for_go_and_an_up_that_ended_before_leaves_it_nothing_to_do(tmp_path):
    """`up` starts the monitor while it builds the network and says "go" once the daemons run. An
    `up` that ended before (its pipe closed, no "go") leaves nothing to watch: the monitor exits at
    once, listens to no daemon, and says nothing."""
    import subprocess

    from emulator.workers import command

    gw = tmp_path / "TestVNet1"
    gw.mkdir()
    done = subprocess.run(command("monitor", str(tmp_path), f"TestVNet1=ns={gw}"),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert not (tmp_path / "events.jsonl").exists()


def test_a_daemon_writes_its_key_log_before_the_key_recorder_runs_and_nothing_is_lost(tmp_path):
    """`up` starts the daemons without waiting for the key recorder's Python to start: it hands the
    worker each key-log FIFO already open, and made large. So the moment the worker is spawned, a
    daemon's open for writing finds a reader (a FIFO without one refuses a non-blocking writer with
    ENXIO, and blocks charon), a burst of handshakes fits (the default 64 kB would make charon wait),
    and what it writes then is recorded once the worker runs."""
    import fcntl
    import json
    import os

    from emulator import lab
    from emulator.keyfiles import CLOSED_FILE, KEY_PIPE
    from emulator.plan import default_plan_path, load_plan
    from emulator.topology import build_topology
    from netns.registry import Registry

    topo = build_topology(load_plan(default_plan_path())[0])
    registry = Registry.create(tmp_path / "lab")
    worker = lab._spawn_key_recorder(registry.directory, topo, registry)
    try:
        gw_dir = lab.gateway_dir(registry.directory, topo.gateways[0], 0)
        fd = os.open(gw_dir / KEY_PIPE, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while the worker's Python starts
        assert fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) == lab.KEY_PIPE_SIZE
        os.write(fd, b"12[IKE] <VNet4Local|1> closing CHILD_SA VNet4Local{1} with SPIs c1c1c1c1_i (100 bytes) "
                     b"c2c2c2c2_o (200 bytes) and TS 10.11.0.0/16 === 10.41.0.0/16\n")
        os.close(fd)
        lab._await_worker(registry, worker)
        deadline = time.monotonic() + 10
        while not (gw_dir / CLOSED_FILE).exists() or not (gw_dir / CLOSED_FILE).read_text():
            assert time.monotonic() < deadline, "the line written before the worker ran was not recorded"
            time.sleep(0.05)
        (record,) = [json.loads(line) for line in (gw_dir / CLOSED_FILE).read_text().splitlines()]
        assert (record["spi_in"], record["bytes_in"], record["bytes_out"]) == ("c1c1c1c1", 100, 200)
    finally:
        worker.proc.kill()
        worker.proc.wait()


def test_a_reader_waits_for_the_monitors_first_look_at_the_links_but_up_does_not(tmp_path):
    """links-down.json comes from the monitor once it has first looked at the links: `status`
    waits for it while the monitor runs (a link taken down right after `up` is never reported up);
    `up`'s own report of the links it has just set does not (the wait made `up` 0.13 s slower)."""
    import json
    import subprocess
    import sys
    from datetime import datetime, timezone

    from emulator.lab import LINKS_DOWN, Lab
    from emulator.plan import load_plan
    from emulator.topology import build_topology
    from netns.registry import Registry
    from tests.conftest import PLANS

    plan, _ = load_plan(str(PLANS / "classic-vnet-to-vnet.yaml"))
    registry = Registry.create(tmp_path / plan.name)
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        registry.adopt_process(stand_in.pid, "event monitor")
        lab = Lab(registry.directory, plan, build_topology(plan), "libipsec",
                  datetime.now(timezone.utc).isoformat(timespec="seconds"), True)

        def first_look():
            time.sleep(1.0)
            (registry.directory / LINKS_DOWN).write_text(json.dumps(["TestVNet1"]))

        looker = threading.Thread(target=first_look)
        looker.start()
        assert lab.links_down(just_built=True) == set()  # at once, before the look
        assert lab.links_down() == {"TestVNet1"}  # waited for it
        looker.join()
    finally:
        stand_in.kill()
        stand_in.wait()


def test_up_reports_the_links_it_has_just_set_and_a_reused_lab_as_the_monitor_sees_it(monkeypatch, run_cli):
    """One look at the links per command, for its rows and for its list of links down: up's
    without the wait (just_built), a reused lab's with it."""
    from types import SimpleNamespace

    from emulator import commands

    looks, used = [], []
    for reused in (False, True):
        lab = SimpleNamespace(name="x", links_down=lambda just_built=False: looks.append(just_built) or {"TestVNet1"})
        monkeypatch.setattr(commands.labmod, "up", lambda *a, **kw: SimpleNamespace(
            warnings=[], reused=reused, lab=lab, seconds=0.1))
        monkeypatch.setattr(commands, "collect", lambda lab, links_down=None: used.append(links_down) or [])
        monkeypatch.setattr(commands, "print_status", lambda lab, rows, down, *a: used.append(down))
        monkeypatch.setattr(commands, "_failures", lambda lab, rows: [])
        run_cli("up", "--name", "x")
    assert looks == [True, False]
    assert used == [{"TestVNet1"}] * 4  # the rows and the list of links down, from that one look
