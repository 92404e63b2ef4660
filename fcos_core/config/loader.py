"""Reading a YAML config safely, remembering the line of every key for error messages."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from fcos_core.errors import ConfigError, FcosUserError, Problem

#: a config larger than this is not a config (bounded parsing of every format we read)
# a real config is 10-20 KiB; PyYAML needs about 2 s of CPU to compose 1.3 MB of flow
# mapping, so 512 KiB keeps `fcos check` under its 2 s on any file it accepts
MAX_CONFIG_BYTES = 512 * 1024
#: refuse YAML "billion laughs": more alias expansions than this is an attack or an accident
MAX_ALIAS_NODES = 10_000

PathKey = tuple  # tuple[str | int, ...]

try:  # the C loader is 5-10x faster; both are "safe" loaders
    _Loader: type = yaml.CSafeLoader  # type: ignore[attr-defined]
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
            "aliases are expanded", hint="a config is a few thousand values; reuse blocks with "
                                         "${...} references instead of aliases")
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key: Any = key_node.value
            if key_node.tag.endswith(":int"):
                try:
                    key = int(key)
                except ValueError:
                    pass
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
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([Problem("", f"invalid YAML: {exc.problem or exc}", line, file)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem("", f"invalid YAML: {exc}", None, file)]) from None
    return data, lines


def _read_capped(p: Path) -> bytes:
    """The bytes of the regular file ``p``, at most :data:`MAX_CONFIG_BYTES` of them.

    ``stat`` is only a first check: the read itself is capped (a file that grows, or a device
    that claims size 0 such as /dev/zero, cannot make it read without bound), and only regular
    files are read (a FIFO would block, a device never ends, a directory is no config).
    """
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise FcosUserError(f"config file {str(p)!r} does not exist",
                            hint="check the path (configs live in configs/, e.g. "
                                 "configs/fcos_b0_demo.yaml)") from None
    except OSError as exc:
        raise FcosUserError(f"config file {str(p)!r} cannot be read: {exc.strerror or exc}",
                            hint="check the path and its permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise FcosUserError(f"config path {str(p)!r} is a directory", hint="pass a .yaml file")
    if not stat.S_ISREG(st.st_mode):
        raise FcosUserError(f"config path {str(p)!r} is not a regular file (a device, FIFO or "
                            "socket)", hint="pass a .yaml file")
    if st.st_size > MAX_CONFIG_BYTES:
        raise FcosUserError(f"config file {str(p)!r} is {st.st_size} bytes; the limit is "
                            f"{MAX_CONFIG_BYTES}", hint="a config should be a few KiB of YAML")
    try:
        # O_NONBLOCK: should the path be swapped for a FIFO after the stat, open does not block
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise FcosUserError(f"config file {str(p)!r} cannot be read: {exc.strerror or exc}",
                            hint="check the path and its permissions") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FcosUserError(f"config path {str(p)!r} is not a regular file",
                                hint="pass a .yaml file")
        chunks, total = [], 0
        while total <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise FcosUserError(f"config file {str(p)!r} cannot be read: {exc.strerror or exc}",
                            hint="check the path and its permissions") from None
    finally:
        os.close(fd)
    if total > MAX_CONFIG_BYTES:
        raise FcosUserError(f"config file {str(p)!r} is over the limit of {MAX_CONFIG_BYTES} "
                            "bytes", hint="a config should be a few KiB of YAML")
    return b"".join(chunks)


def load_yaml(path: str | os.PathLike[str]) -> tuple[dict[str, Any], LineMap]:
    """Read a config file: a YAML mapping at the top level, a regular file of at most
    :data:`MAX_CONFIG_BYTES`."""
    p = Path(path)
    raw = _read_capped(p)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FcosUserError(f"config file {str(p)!r} is not UTF-8 text ({exc.reason})",
                            hint="save the file as UTF-8 YAML") from None
    data, lines = parse_yaml_text(text, str(p))
    if data is None:
        raise ConfigError([Problem("", "the file is empty", None, str(p))])
    if not isinstance(data, dict):
        raise ConfigError([Problem("", f"the top level must be a mapping of keys, got a "
                                       f"{type(data).__name__}", 1, str(p))])
    return data, lines
