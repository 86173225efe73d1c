"""What a method records per stage: one small typed record with a schema version.

A :class:`StageRecord` reads like the dict it used to be (``r["macs"]``, ``r.get("acc")``) and has
typed fields; ``to_json`` / ``from_json`` are the only place records are written and parsed
(``records.json``, ``summary.json``, the benchmarks' results).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

_CORE = ("stage", "params", "macs", "acc")


@dataclass(frozen=True, eq=False)
class StageRecord(Mapping):
    """``stage``: "baseline", "sparse", "pruned", "finetuned", "layer", ...; ``params`` and ``macs`` of
    the model then; ``acc``: test accuracy (None when no test loader was given); ``extras``: what the
    method adds (``pass``, ``layer``/``kept``/``of``, ``ranks``, ``gammas``, ...)."""

    VERSION: ClassVar[int] = 1

    stage: str
    params: int
    macs: int
    acc: float | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str):
        if key in _CORE and (key != "acc" or self.acc is not None):
            return getattr(self, key)
        return self.extras[key]

    def __iter__(self) -> Iterator[str]:
        yield from (k for k in _CORE if k != "acc" or self.acc is not None)
        yield from self.extras

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def with_extras(self, **extras) -> StageRecord:
        return replace(self, extras={**self.extras, **extras})

    def to_json(self, *, drop: tuple[str, ...] = ()) -> dict[str, Any]:
        """A JSON-ready dict with the schema version; ``drop``: extras left out (large ones, "gammas")."""
        return {"version": self.VERSION, **{k: v for k, v in self.items() if k not in drop}}

    @classmethod
    def from_json(cls, data: Any) -> StageRecord:
        """Parse :meth:`to_json` output (a record without a version is version 1); ValueError if malformed."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a stage record must be a JSON object, got {type(data).__name__}")
        version = data.get("version", 1)
        if version != cls.VERSION:
            raise ValueError(f"stage record version {version!r}; this secateur reads version {cls.VERSION}")
        stage, params, macs, acc = (data.get(k) for k in _CORE)
        if not isinstance(stage, str) or not _int(params) or not _int(macs) \
                or not (acc is None or isinstance(acc, (int, float)) and not isinstance(acc, bool)):
            raise ValueError(f"stage record {dict(data)!r:.120} needs stage (text), params and macs (integers) "
                             f"and acc (a number or absent)")
        extras = {k: v for k, v in data.items() if k not in (*_CORE, "version")}
        return cls(stage, params, macs, None if acc is None else float(acc), extras)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0
