"""Errors a user can fix. The CLI prints them without a traceback and exits with code 2."""

from __future__ import annotations

import attrs


class FcosUserError(Exception):
    """A mistake in input the user controls (config, paths, plugins); ``hint`` says the fix."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message + (f"\n  fix: {self.hint}" if self.hint else "")


@attrs.frozen
class Problem:
    """One config problem: the dotted path, what is wrong, and where in the file."""

    path: str
    message: str
    line: int | None = None
    file: str | None = None

    def render(self) -> str:
        where = self.file or "<config>"
        if self.line is not None:
            where += f":{self.line}"
        return f"{where}: {self.path or '<top level>'}: {self.message}"


class ConfigError(FcosUserError):
    """All problems found in a config, reported together."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in the config:"
        super().__init__(head + "".join(f"\n  - {p.render()}" for p in self.problems))


class RegistryError(FcosUserError):
    """Duplicate registration or a lookup of a name nobody registered."""


class PluginError(FcosUserError):
    """A plugin that could not be loaded or implements hooks wrongly."""
