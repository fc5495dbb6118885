"""Writing outputs so that a killed job never leaves one that looks complete."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from .errors import InputError

__all__ = ["atomic_path", "WriteError"]


class WriteError(InputError):
    """An output could not be written (disk full, no permission, read-only filesystem, …); nothing of it
    is left behind."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path`` is left
    untouched. An OSError while writing (ENOSPC, EACCES, EROFS, …) becomes a :class:`WriteError` naming
    ``path`` and the reason.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
            raise WriteError(f"cannot write '{path}': {e.strerror or e}; nothing was written") from e
        raise
