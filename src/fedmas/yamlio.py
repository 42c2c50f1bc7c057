"""Reading the YAML files a user gives fedmas (configs, ``--set`` values): bounded in size and depth, without
aliases or duplicate keys, every problem a :class:`ConfigError` naming the file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from fedmas.files import read_small_text


class ConfigError(ValueError):
    """A bad configuration value; the message says which and what is accepted."""


MAX_YAML_BYTES = 1 << 20
MAX_YAML_DEPTH = 32


class _BoundedLoader(yaml.SafeLoader):
    """YAML without aliases and at most :data:`MAX_YAML_DEPTH` levels deep: an alias bomb or a deeply
    nested document is refused while it is read, before anything walks it."""

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.YAMLError(f"key {key!r} appears twice in one mapping (line {key_node.start_mark.line + 1}); "
                                     f"fedmas does not guess which one you meant")
            seen.add(key)
        return super().construct_mapping(node, deep)

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"YAML aliases (*name) are not accepted in fedmas files (line {mark.line + 1})")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.YAMLError(f"nested more than {MAX_YAML_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def safe_yaml(text: str, source: str) -> Any:
    """Parse bounded YAML (size, depth, no aliases); :class:`ConfigError` naming ``source`` otherwise."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_YAML_BYTES // 1024} KiB; not a fedmas config")
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({one_line(str(e))})") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _parse_value(text: str) -> Any:
    try:
        return safe_yaml(text, "--set value")
    except ConfigError:
        if len(text) > MAX_YAML_BYTES:
            raise
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. federation.rounds=10")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a section")
        node[parts[-1]] = _parse_value(value)
    return raw


def add_import_path(folder: Path, first: bool = False) -> None:
    """Make modules in ``folder`` importable (after everything else, or ``first``)."""
    d = str(Path(folder).resolve())
    if d in sys.path:
        if not first or sys.path[0] == d:
            return
        sys.path.remove(d)
    sys.path.insert(0, d) if first else sys.path.append(d)


def read_yaml_mapping(p: Path, what: str) -> dict[str, Any]:
    """A YAML file whose top level is a non-empty mapping; :class:`ConfigError` naming the file otherwise."""
    loaded = safe_yaml(read_small_text(p, what, MAX_YAML_BYTES, ConfigError), str(p))
    if loaded is None:
        raise ConfigError(f"{p}: the file is empty; a config needs at least 'tasks:' or 'method:'")
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys to values")
    return loaded
