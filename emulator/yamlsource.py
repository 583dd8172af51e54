"""Safe YAML reading that remembers the line of every mapping key, for error messages.

Aliases and anchors are refused (a plan needs none, and they are how YAML bombs work);
duplicate keys are refused (PyYAML would silently keep the last one).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode

MAX_PLAN_BYTES = 1_000_000


class LineMap(dict):
    """A mapping that knows the line of each of its keys (1-based) and its own line."""

    line: int | None = None
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int | None:
        return self.key_lines.get(key, self.line)


class YamlProblem(Exception):
    def __init__(self, message: str, line: int | None):
        super().__init__(message)
        self.message = message
        self.line = line


class _Loader(yaml.SafeLoader):
    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(AliasEvent):
            event = self.peek_event()
            raise YamlProblem("YAML aliases (*name) are not allowed in a plan", event.start_mark.line + 1)
        node = super().compose_node(parent, index)
        if getattr(node, "anchor", None):
            raise YamlProblem("YAML anchors (&name) are not allowed in a plan", node.start_mark.line + 1)
        return node


def _construct_mapping(loader: _Loader, node: MappingNode, deep: bool = False) -> LineMap:
    result = LineMap()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, (str, int, float, bool)) or isinstance(key, bool):
            raise YamlProblem(f"mapping keys must be names, not {type(key).__name__}", line)
        key = str(key)
        if key in result:
            raise YamlProblem(f"duplicate key '{key}'", line)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str) -> Any:
    """Parse YAML text; raises YamlProblem with a line number on malformed input."""
    if len(text.encode("utf-8", "replace")) > MAX_PLAN_BYTES:
        raise YamlProblem(f"file is larger than {MAX_PLAN_BYTES} bytes; a plan is far smaller", None)
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader
    except YamlProblem:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise YamlProblem(f"malformed YAML: {exc.problem or exc.context}", line) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(f"malformed YAML: {exc}", None) from None
    except RecursionError:
        raise YamlProblem("malformed YAML: nesting too deep", None) from None
