"""Files written atomically: a crash never leaves a half-written result (DESIGN.md, outputs)."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(temporary)`` fills a temporary file beside ``path``, which is renamed into place
    only if ``write`` succeeds. The file gets the mode of any new file (the umask's), not the
    private 0600 that ``mkstemp`` gives. Under torchrun only rank 0 writes (``bridge.distributed``):
    every process computes the same files, one of them keeps them."""
    path = Path(path)
    group = sys.modules.get("torch.distributed")  # looked up, not imported: this module stays light
    if group is not None and group.is_available() and group.is_initialized() and group.get_rank() != 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def first_line(error: BaseException) -> str:
    """An error's message as one line (its first), or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def json_safe(value: Any) -> Any:
    """Strict JSON: non-finite floats (t = inf) become the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """``payload`` as strict, indented JSON, written atomically."""
    text = json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n"
    return write_atomically(path, lambda temporary: temporary.write_text(text))
