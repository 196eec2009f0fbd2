"""JSON serialisation shared by the analysis results (dissection, pathway IoU)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

from ..checkpoint import atomic_write_bytes
from ..errors import ConfigError


class JsonRecord:
    """Mixin for result dataclasses: ``to_dict``/``to_json``/``save``, and the schema check of ``from_dict``.

    Subclasses set ``SCHEMA_VERSION`` (written as the ``schema_version`` field) and ``KIND`` (the words
    used in error messages).
    """

    SCHEMA_VERSION: ClassVar[int] = 1
    KIND: ClassVar[str] = "result"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> Path:
        """Write the JSON atomically (a reader never sees half a file)."""
        atomic_write_bytes(path, (self.to_json() + "\n").encode())
        return Path(path)

    @classmethod
    def checked_fields(cls, d: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``d``; a file from a newer schema is refused with a clear error."""
        d = dict(d)
        if int(d.get("schema_version", 0)) > cls.SCHEMA_VERSION:
            raise ConfigError(f"{cls.KIND} written by a newer schema ({d['schema_version']}); upgrade to read it")
        return d
