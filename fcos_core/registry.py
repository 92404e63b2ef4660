"""Registries of components, filled only through the registration hooks.

Each entry keeps its name, factory, schema, and where it came from (plugin, distribution,
version). Lookups of unknown names say what is available, suggest the nearest name, and name
the distribution that provides it when fcos knows it.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs

from fcos_core.errors import RegistryError
from fcos_core.hookspecs import Register, registration_hooks
from fcos_core.schema import schema_doc

#: registry kind -> the hook that fills it, derived from the ``register_<kind>`` hookspecs (in
#: their order, which is the order of ``fcos plugins`` and the config reference)
KINDS: dict[str, str] = {name.removeprefix("register_"): name for name in registration_hooks()}

#: what each first-party plugin distribution registers (names and aliases), by kind; kept
#: complete by tests/core/test_registry_kinds.py, which loads every plugin in plugins/*
_FIRST_PARTY: dict[str, dict[str, tuple[str, ...]]] = {
    "fcos-plugin-efficientnet": {"backbones": ("efficientnet",)},
    "fcos-plugin-bifpn": {"necks": ("BiFPN",)},
    "fcos-plugin-coco": {
        "datasets": ("Coco", "CocoFolder"),
        "metrics": ("COCODetectionMetric",),
        "collates": ("collate_2d",),
        "transforms": (
            "Resize",
            "RandomCrop",
            "Pad",
            "RandomFlip",
            "AugmentHSV",
            "ToTensor",
            "Normalize",
        ),
        "commands": ("pack-coco", "demo-data", "analyze-data", "val"),
    },
    "fcos-plugin-nash-e": {
        "compile_backends": ("nash_e", "NASH_E"),
        "commands": ("compile", "infer"),
    },
    "fcos-plugin-onnx": {"compile_backends": ("onnx", "ONNX"), "commands": ("onnx-compare",)},
    "fcos-plugin-tensorrt": {"compile_backends": ("tensorrt", "TensorRT", "trt")},
    "fcos-plugin-openvino": {"compile_backends": ("openvino", "OpenVINO", "ov")},
}

#: (kind, name) of a first-party component -> the distribution that provides it, so that an
#: unknown ``type:`` / ``march:`` can say what to install
KNOWN_PROVIDERS: dict[tuple[str, str], str] = {
    (kind, name): dist
    for dist, kinds in _FIRST_PARTY.items()
    for kind, names in kinds.items()
    for name in names
}


@attrs.frozen
class Entry:
    """One registered component."""

    kind: str
    name: str
    factory: str | Callable[..., Any]
    schema: type | None
    doc: str
    plugin: str
    distribution: str | None
    version: str | None
    extra: dict[str, Any] = attrs.field(factory=dict)

    @property
    def provider(self) -> str:
        """Human name of where this entry comes from."""
        if self.distribution:
            return f"{self.distribution} {self.version or ''}".strip() + f" (plugin {self.plugin})"
        return f"plugin {self.plugin}"

    @property
    def factory_ref(self) -> str:
        """The factory as ``module:attr``, without importing it: a lazy entry holds exactly
        that string; an object registered directly names its own module and qualified name."""
        if isinstance(self.factory, str):
            return self.factory
        obj: Any = self.factory
        if not hasattr(obj, "__qualname__"):  # an instance with __call__: name its class
            obj = type(obj)
        return f"{obj.__module__}:{obj.__qualname__}"

    def load(self) -> Callable[..., Any]:
        """Import and return the factory (the first call may import torch)."""
        if callable(self.factory):
            return self.factory
        module_name, _, attr = self.factory.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise RegistryError(
                f"{self.kind} '{self.name}' from {self.provider} points at {self.factory!r}, "
                f"which cannot be imported: {exc}",
                hint=f"reinstall {self.distribution or self.plugin}, or disable it",
            ) from exc
        if not callable(obj):
            raise RegistryError(
                f"{self.kind} '{self.name}' from {self.provider} points at {self.factory!r}, "
                f"which is a {type(obj).__name__}, not a callable",
                hint=f"the factory must be a class or function; reinstall "
                f"{self.distribution or self.plugin}, or disable it",
            )
        factory: Callable[..., Any] = obj
        return factory


class Registry:
    """The entries of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    def add(self, entry: Entry, aliases: Sequence[str] = ()) -> None:
        for name in (entry.name, *aliases):
            other = self.get(name)
            if other is not None:
                raise RegistryError(
                    f"{self.kind} '{name}' is registered twice: by {other.provider} and by "
                    f"{entry.provider}",
                    hint="uninstall or disable one of the two plugins (FCOS_DISABLE_PLUGINS)",
                )
        self._entries[entry.name] = entry
        for alias in aliases:
            self._aliases[alias] = entry.name

    def get(self, name: str) -> Entry | None:
        return self._entries.get(self._aliases.get(name, name))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def aliases(self) -> dict[str, str]:
        """Alias -> the name it stands for."""
        return dict(self._aliases)

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def unknown_message(self, name: str, broken: Sequence[str] = ()) -> tuple[str, str]:
        """Message and hint for a lookup of ``name`` that found nothing."""
        available = self.names() + sorted(self._aliases)
        msg = f"unknown {self.kind[:-1] if self.kind.endswith('s') else self.kind} type {name!r}"
        hints: list[str] = []
        near = difflib.get_close_matches(name, available, n=1, cutoff=0.6)
        if not near:
            lowered = {a.lower(): a for a in available}
            near = [lowered[name.lower()]] if name.lower() in lowered else []
        if near:
            hints.append(f"did you mean {near[0]!r}?")
        dist = KNOWN_PROVIDERS.get((self.kind, name))
        if dist is not None:
            why = [b for b in broken if b.startswith(dist + ":")]
            hints.append(
                f"{name!r} comes from {dist}, which is not installed: pip install {dist}"
                if not why
                else f"{name!r} comes from {dist}, which is installed but not loaded "
                f"({'; '.join(why)})"
            )
        msg += f"; available: {', '.join(available) if available else '(none registered)'}"
        return msg, " ".join(hints) if hints else "check the spelling or install the plugin"

    def lookup(self, name: str) -> Entry:
        entry = self.get(name)
        if entry is None:
            msg, hint = self.unknown_message(name)
            raise RegistryError(msg, hint=hint)
        return entry


class Registries:
    """All registries, one per kind in :data:`KINDS`."""

    def __init__(self) -> None:
        self._by_kind = {kind: Registry(kind) for kind in KINDS}

    def __getitem__(self, kind: str) -> Registry:
        try:
            return self._by_kind[kind]
        except KeyError:
            raise KeyError(f"no registry kind {kind!r}; kinds are {', '.join(KINDS)}") from None

    def kinds(self) -> list[str]:
        return list(self._by_kind)

    def entries(self) -> Iterator[Entry]:
        for reg in self._by_kind.values():
            yield from reg

    def make_register(
        self, kind: str, plugin: str, distribution: str | None, version: str | None
    ) -> Register:
        """The ``register`` callable handed to one plugin's implementation of one hook."""
        registry = self[kind]

        def register(
            name: str,
            factory: str | Callable[..., Any],
            schema: type | None = None,
            doc: str | None = None,
            aliases: Sequence[str] = (),
            **extra: Any,
        ) -> None:
            if not isinstance(name, str) or not name:
                raise RegistryError(f"plugin {plugin} registered a {kind} entry without a name")
            if isinstance(factory, str) and ":" not in factory:
                raise RegistryError(
                    f"plugin {plugin} registered {kind} '{name}' with factory {factory!r}",
                    hint="use 'package.module:attribute'",
                )
            entry = Entry(
                kind=kind,
                name=name,
                factory=factory,
                schema=schema,
                doc=doc if doc is not None else schema_doc(schema),
                plugin=plugin,
                distribution=distribution,
                version=version,
                extra=dict(extra),
            )
            registry.add(entry, aliases)

        return register
