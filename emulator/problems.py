"""Errors and warnings about user input, collected so a user sees every mistake at once.

Every problem names the file (and line when known), the object and the field, and says what
would be valid. The CLI maps the exception classes here onto its exit codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from difflib import get_close_matches
from enum import IntEnum
from typing import Any, Iterable


class ExitCode(IntEnum):
    OK = 0
    CHECK_FAILED = 1  # a tunnel is not up, a probe failed
    BAD_INPUT = 2  # plan, file or arguments
    ENVIRONMENT = 3  # not root, strongSwan missing, no such lab


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" | "warning"
    source: str  # file name, with ":line" when the YAML gives one
    obj: str  # e.g. "vnets.TestVNet1"
    field: str  # e.g. "gateway_subnet"
    message: str

    def __str__(self) -> str:
        where = f"{self.obj}.{self.field}" if self.field else self.obj
        return f"{self.source}: {self.severity}: {where}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {
            "severity": self.severity,
            "source": self.source,
            "object": self.obj,
            "field": self.field,
            "message": self.message,
        }


class VnetlabError(Exception):
    """Base of the errors the CLI reports without a traceback."""

    exit_code = ExitCode.BAD_INPUT


class PlanError(VnetlabError):
    """A plan (or netcfg file) has errors; carries all of them."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class UsageError(VnetlabError):
    """Bad arguments or a file that cannot be read."""


class EnvironmentProblem(VnetlabError):
    """The machine lacks something (root, strongSwan, a running lab); says what to do."""

    exit_code = ExitCode.ENVIRONMENT


class CheckFailed(VnetlabError):
    """The lab runs but does not do what the plan says."""

    exit_code = ExitCode.CHECK_FAILED


@dataclass
class Collector:
    """Gathers problems for one input file; `raise_if_errors` is the checkpoint between stages."""

    source: str
    problems: list[Problem] = field(default_factory=list)
    lines: dict[tuple[str, str], int] = field(default_factory=dict)  # (object, field) -> line, from YAML

    def error(self, obj: str, fld: str, message: str, line: int | None = None) -> None:
        self.problems.append(Problem("error", self._where(obj, fld, line), obj, fld, message))

    def warning(self, obj: str, fld: str, message: str, line: int | None = None) -> None:
        self.problems.append(Problem("warning", self._where(obj, fld, line), obj, fld, message))

    def _where(self, obj: str, fld: str, line: int | None) -> str:
        line = line or self.lines.get((obj, fld)) or self.lines.get((obj, ""))
        return f"{self.source}:{line}" if line else self.source

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def raise_if_errors(self) -> None:
        if self.errors:
            raise PlanError(self.problems)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' or ' (valid: a, b, c)' — a hint for an unknown name."""
    choices = sorted(choices)
    close = get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; valid: {', '.join(choices)}" if choices else ""


def connection_label(index: int, vnet: Any, site: Any) -> str:
    """How messages name a connection: its position in the list, and what it joins when known."""
    if isinstance(vnet, str) and isinstance(site, str):
        return f"connections[{index}] ({vnet} -> {site})"
    return f"connections[{index}]"
