"""The supervisor's loop, without daemons: what counts toward its restart limit."""

import threading
from contextlib import contextmanager

from emulator.workers import monitor


def _loop(tmp_path, monkeypatch, restarted: list[bool]) -> int:
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
    monkeypatch.setattr(monitor.time, "sleep", lambda s: None)
    monitor.listen("TestVNet1", gw, monitor.Recorder(lab), threading.Barrier(1))
    return len(rounds)


def test_a_slow_daemon_is_not_counted_as_a_restart(tmp_path, monkeypatch):
    """A daemon that only answered slowly (its process still runs) must not use up the restart
    limit: after it, a real death is still healed."""
    rounds = monitor.RESTARTS_PER_MINUTE * 3
    assert _loop(tmp_path, monkeypatch, [False] * (rounds - 1) + [True]) == rounds


def test_a_daemon_that_dies_after_every_start_is_left_down(tmp_path, monkeypatch):
    rounds = monitor.RESTARTS_PER_MINUTE * 3
    assert _loop(tmp_path, monkeypatch, [True] * rounds) == monitor.RESTARTS_PER_MINUTE


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
