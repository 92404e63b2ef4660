"""Does a component's schema match its factory's signature?

The builder calls ``factory(**fields)`` with every schema field, so a field the factory does
not take fails only when someone builds that block, and a required factory argument the
schema lacks can never be set from a config. :func:`schema_mismatches` finds both before
that, plus defaults that disagree (the Python API and the config would then differ).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from fcos_core.registry import Entry

#: arguments the builder passes to a kind's factories besides the schema's fields, as the
#: hookspecs document them (``register_samplers``: the data loader adds ``dataset``;
#: ``register_optimizers``: the trainer adds ``model``)
BUILDER_ARGS: dict[str, tuple[str, ...]] = {"samplers": ("dataset",), "optimizers": ("model",)}


def _same(a: Any, b: Any) -> bool:
    """Defaults compare equal when a schema's list matches a factory's tuple, and when the
    schema's empty container stands for the factory's ``None`` (the idiom for a mutable
    default)."""
    if b is None and isinstance(a, (list, tuple, dict)) and not a:
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except (ValueError, TypeError):  # e.g. an array's ambiguous truth: not the same default
        return False


def _signature(factory: Callable[..., Any]) -> inspect.Signature:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"cannot read the signature of {factory!r}: {exc}") from exc


def schema_mismatches(
    entry: Entry, *, extra: Sequence[str] = (), defaults: bool = True
) -> list[str]:
    """Differences between ``entry.schema`` and the signature of ``entry``'s factory (loads
    the factory, which may import torch). ``extra`` names arguments the builder passes besides
    the schema's fields, on top of :data:`BUILDER_ARGS` of the entry's kind; ``defaults=False``
    skips comparing default values. Empty when they match; an entry without a schema has
    nothing to match."""
    if entry.schema is None:
        return []
    from fcos_core.schema import fields_of

    where = f"{entry.kind} '{entry.name}' ({entry.provider})"
    params = _signature(entry.load()).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    by_name = {
        n: p
        for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    fields = fields_of(entry.schema)
    supplied = {*extra, *BUILDER_ARGS.get(entry.kind, ())}
    problems = []
    for name, field in fields.items():
        param = by_name.get(name)
        if param is None:
            if not takes_any:
                problems.append(
                    f"{where}: schema field '{name}' is not an argument of the "
                    f"factory {entry.factory!r}"
                )
            continue
        if (
            defaults
            and field.kind is None
            and not field.required
            and param.default is not inspect.Parameter.empty
            and not _same(field.default, param.default)
        ):
            problems.append(
                f"{where}: '{name}' defaults to {field.default!r} in the schema but "
                f"to {param.default!r} in the factory"
            )
    for name, param in params.items():
        if param.kind is inspect.Parameter.POSITIONAL_ONLY and param.default is param.empty:
            problems.append(
                f"{where}: the factory's positional-only argument '{name}' cannot "
                "be passed by the builder"
            )
        elif (
            name in by_name
            and param.default is param.empty
            and name not in fields
            and name not in supplied
        ):
            problems.append(
                f"{where}: the factory requires '{name}', which the schema "
                f"{entry.schema.__name__} does not have"
            )
    return problems


def assert_schema_matches_factory(
    kind: str, name: str, *, host: Any = None, extra: Sequence[str] = (), defaults: bool = True
) -> None:
    """Fail when the schema of component ``name`` of registry ``kind`` does not match its
    factory's signature (see :func:`schema_mismatches`). ``host`` defaults to one with every
    installed plugin; pass the ``fcos_host`` fixture's host to check in isolation."""
    if host is None:
        from fcos_core.plugins import load_host

        host = load_host()
    entry = host.registries[kind].lookup(name)
    problems = schema_mismatches(entry, extra=extra, defaults=defaults)
    if problems:
        raise AssertionError("\n".join(problems))
