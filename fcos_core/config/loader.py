"""Reading a YAML config safely, remembering the line of every key for error messages."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import yaml

from fcos_core.bounded_read import ReadRefused, read_regular_file
from fcos_core.errors import ConfigError, FcosUserError, Problem

#: a config larger than this is not a config (bounded parsing of every format we read)
# a real config is 10-20 KiB; PyYAML needs about 2 s of CPU to compose 1.3 MB of flow
# mapping, so 512 KiB keeps `fcos check` under its 2 s on any file it accepts
MAX_CONFIG_BYTES = 512 * 1024
#: refuse YAML "billion laughs": more alias expansions than this is an attack or an accident
MAX_ALIAS_NODES = 10_000

PathKey = tuple  # tuple[str | int, ...]

try:  # the C loader is 5-10x faster; both are "safe" loaders
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - pure-python PyYAML
    _Loader = yaml.SafeLoader


def format_path(path: PathKey) -> str:
    """('a', 'b', 3, 'c') -> 'a.b[3].c'"""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class LineMap:
    """Dotted path -> 1-based line of the key (or list item) in the file."""

    def __init__(self, file: str | None) -> None:
        self.file = file
        self._lines: dict[PathKey, int] = {}

    def set(self, path: PathKey, line: int) -> None:
        self._lines.setdefault(path, line)

    def line(self, path: PathKey) -> int | None:
        """The line of ``path`` or of its nearest ancestor that has one."""
        p = tuple(path)
        while True:
            if p in self._lines:
                return self._lines[p]
            if not p:
                return None
            p = p[:-1]

    def problem(self, path: PathKey, message: str) -> Problem:
        return Problem(format_path(path), message, self.line(path), self.file)


def _walk(node: yaml.Node, path: PathKey, lines: LineMap, budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise FcosUserError(
            f"{lines.file}: the YAML has more than {MAX_ALIAS_NODES} nodes once anchors and "
            "aliases are expanded",
            hint="a config is a few thousand values; reuse blocks with "
            "${...} references instead of aliases",
        )
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key: Any = key_node.value
            if key_node.tag.endswith(":int"):
                with contextlib.suppress(ValueError):
                    key = int(key)
            child = (*path, key)
            lines.set(child, key_node.start_mark.line + 1)
            _walk(value_node, child, lines, budget)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = (*path, i)
            lines.set(child, item.start_mark.line + 1)
            _walk(item, child, lines, budget)


def parse_yaml_text(text: str, file: str | None = None) -> tuple[Any, LineMap]:
    """Parse YAML text with the safe loader; returns the data and its line map."""
    lines = LineMap(file)
    try:
        node = yaml.compose(text, Loader=_Loader)
        if node is not None:
            _walk(node, (), lines, [MAX_ALIAS_NODES])
        # what yaml.load does, spelled out: _Loader is always a SafeLoader (C or pure Python)
        loader = _Loader(text)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(
            [Problem("", f"invalid YAML: {exc.problem or exc}", line, file)]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem("", f"invalid YAML: {exc}", None, file)]) from None
    return data, lines


def _read_capped(p: Path) -> bytes:
    """The bytes of the regular file ``p``, at most :data:`MAX_CONFIG_BYTES` of them
    (:func:`fcos_core.bounded_read.read_regular_file`: regular files only, the read capped
    whatever ``stat`` says)."""
    try:
        return read_regular_file(p, MAX_CONFIG_BYTES)
    except ReadRefused as why:
        name = str(p)
        if why.kind == "missing":
            raise FcosUserError(
                f"config file {name!r} does not exist",
                hint="check the path (configs live in configs/, e.g. configs/fcos_b0_demo.yaml)",
            ) from None
        if why.kind == "directory":
            raise FcosUserError(
                f"config path {name!r} is a directory", hint="pass a .yaml file"
            ) from None
        if why.kind == "not_regular":
            raise FcosUserError(
                f"config path {name!r} is not a regular file (a device, FIFO or socket)",
                hint="pass a .yaml file",
            ) from None
        if why.kind == "too_large":
            raise FcosUserError(
                f"config file {name!r} is over the limit of {MAX_CONFIG_BYTES} "
                f"bytes ({why.detail})",
                hint="a config should be a few KiB of YAML",
            ) from None
        raise FcosUserError(
            f"config file {name!r} cannot be read: {why.detail}",
            hint="check the path and its permissions",
        ) from None


def load_yaml(path: str | os.PathLike[str]) -> tuple[dict[str, Any], LineMap]:
    """Read a config file: a YAML mapping at the top level, a regular file of at most
    :data:`MAX_CONFIG_BYTES`."""
    p = Path(path)
    raw = _read_capped(p)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FcosUserError(
            f"config file {str(p)!r} is not UTF-8 text ({exc.reason})",
            hint="save the file as UTF-8 YAML",
        ) from None
    data, lines = parse_yaml_text(text, str(p))
    if data is None:
        raise ConfigError([Problem("", "the file is empty", None, str(p))])
    if not isinstance(data, dict):
        raise ConfigError(
            [
                Problem(
                    "",
                    f"the top level must be a mapping of keys, got a {type(data).__name__}",
                    1,
                    str(p),
                )
            ]
        )
    return data, lines
