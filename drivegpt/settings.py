"""One rule for config -> object (ground floor): typed settings that reject unknown keys.

Every component's settings are a dataclass built from its config group (a hydra DictConfig or
a plain mapping) with ``typed(cls, data, where)``: an unknown key raises naming it (a typo in
an override or in a stored checkpoint config is never dropped silently). Nested groups that
are not dataclasses (the tokenizer's) are checked against a schema of names with
``check_keys``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

from omegaconf import DictConfig, OmegaConf

T = TypeVar("T")


def plain(data: Any) -> dict:
    """A DictConfig (resolved) or mapping as a plain dict; None as {}."""
    if data is None:
        return {}
    if isinstance(data, DictConfig):
        return OmegaConf.to_container(data, resolve=True)
    return dict(data)


def check_keys(data: Mapping, schema: Mapping | set | tuple, where: str) -> None:
    """Raise naming every key of ``data`` that ``schema`` does not know (nested mappings too).

    ``schema``: the known names, or a mapping name -> sub-schema (None = any value)."""
    known = schema if isinstance(schema, Mapping) else {k: None for k in schema}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        keys = ", ".join(f"{where}.{k}" for k in unknown)
        raise ValueError(f"{keys}: unknown setting{'s' if len(unknown) > 1 else ''} "
                         f"(valid: {', '.join(sorted(map(str, known)))})")
    for k, sub in known.items():
        if sub is not None and isinstance(data.get(k), Mapping):
            check_keys(data[k], sub, f"{where}.{k}")


def typed(cls: type[T], data: Any, where: str, **overrides) -> T:
    """``cls(**data, **overrides)`` for a dataclass ``cls``; unknown keys raise naming them."""
    d = plain(data)
    d.update(overrides)
    check_keys(d, {f.name for f in dataclasses.fields(cls)}, where)
    return cls(**d)
