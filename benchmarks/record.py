"""Where a benchmark's numbers come from, and how they are written.

Every benchmark program stores its results as JSON through `write_json`, with the same
`provenance` block: the command that reproduces them, the date, the machine and the
software. The figures in the README and docs cite these fields.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax


def provenance(module: str, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command (``python -m <module> <argv>``, by default this process's arguments),
    the UTC date, the machine, the JAX backend and versions."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    return {
        "command": " ".join(["python -m", module, *arguments]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}".strip(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def write_json(path: str | Path, payload: Any, *, indent: int | None = 1) -> Path:
    """Writes ``payload`` (JSON types) to ``path``, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=indent))
    return path
