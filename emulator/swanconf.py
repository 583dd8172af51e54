"""Read the swanctl.conf/secrets.conf that `render` wrote and turn them into vici messages.

The lab loads exactly the files a user can read in the lab directory: one source of truth,
the templates. The syntax is strongSwan's settings format (sections in braces, `key = value`,
`#` comments, `include FILE`); as swanctl does, keys that hold lists are split at commas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LIST_KEYS = {"local_addrs", "remote_addrs", "proposals", "esp_proposals", "local_ts", "remote_ts"}
_TOKEN = re.compile(r"\s*(?:(#[^\n]*)|(\{)|(\})|([^\s={}#]+)\s*=\s*([^\n#]*)|include\s+(\S+)|(\S+))")


class ConfSyntaxError(ValueError):
    pass


def parse_settings(text: str, base: Path) -> dict[str, Any]:
    root: dict[str, Any] = {}
    stack = [root]
    pending: str | None = None
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip():
                raise ConfSyntaxError(f"cannot parse near {text[pos:pos + 40]!r}")
            break
        pos = m.end()
        comment, opening, closing, key, value, include, word = m.groups()
        if comment:
            continue
        if include:
            stack[-1].update(parse_settings((base / include).read_text(encoding="utf-8"), base))
        elif key:
            stack[-1][key] = value.strip()
        elif word:
            pending = word
        elif opening:
            if pending is None:
                raise ConfSyntaxError("section without a name")
            section: dict[str, Any] = stack[-1].setdefault(pending, {})
            stack.append(section)
            pending = None
        elif closing:
            if len(stack) == 1:
                raise ConfSyntaxError("unbalanced '}'")
            stack.pop()
    if len(stack) != 1:
        raise ConfSyntaxError("unclosed section")
    return root


def _vici_values(section: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, dict):
            out[key] = _vici_values(value)
        elif key in LIST_KEYS:
            out[key] = [v.strip() for v in value.split(",") if v.strip()]
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class ViciConfig:
    connections: dict[str, dict[str, Any]]  # name -> load-conn body
    secrets: list[dict[str, Any]]  # load-shared messages


def read_gateway_config(directory: Path) -> ViciConfig:
    settings = parse_settings((directory / "swanctl.conf").read_text(encoding="utf-8"), directory)
    conns = {name: _vici_values(body) for name, body in settings.get("connections", {}).items()}
    secrets = []
    for name, body in settings.get("secrets", {}).items():
        owners = [v for k, v in body.items() if k == "id" or k.startswith("id-")]
        secrets.append({"id": name, "type": "IKE", "data": body["secret"], "owners": owners})
    return ViciConfig(conns, secrets)
