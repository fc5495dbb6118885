"""HDF5 and file I/O that never leaves an output looking complete after a crash.

Every writer goes through :func:`atomic_path`: it writes to a temporary sibling and renames it onto the
target only once the body finished without error, so a killed job leaves either nothing or a
``*.tmp-<pid>`` file that no rule treats as output.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from .._version import __version__
from ..atomic import atomic_path
from ..errors import InputError

__all__ = ["write_h5", "read_h5", "read_attrs", "write_json", "provenance", "StoreError"]


class StoreError(InputError):
    """A store file is missing, unreadable or lacks a dataset it must have."""


def _attr_value(v: Any) -> Any:
    if v is None:
        return "null"
    if isinstance(v, (dict, list, tuple)) and not (
        isinstance(v, (list, tuple)) and v and all(isinstance(e, (int, float)) for e in v)
    ):
        return json.dumps(v, sort_keys=True)
    if isinstance(v, Path):
        return str(v)
    return v


#: HDF5 files up to this many bytes of data are built in memory and written to disk in one plain write.
#: HDF5 1.14 (h5py 3.16) crashed the process (SIGSEGV inside the close) when the disk filled up during a
#: write; a plain write fails with a clean ENOSPC instead. Larger files (paper-scale stores) are written
#: by HDF5 directly and keep that risk.
IN_MEMORY_MAX_BYTES = 1 << 30


def write_h5(
    path: str | os.PathLike,
    datasets: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any] | None = None,
    chunk_first_axis: bool = True,
    compression: str | None = "gzip",
) -> None:
    """Write ``datasets`` (name → array) and file attributes atomically to ``path``.

    Arrays of two or more dimensions are chunked one item along the first axis (one image per chunk)
    and compressed; strings are stored as UTF-8 variable-length strings. Attribute values that are
    dicts or mixed lists are stored as JSON text; ``None`` as ``"null"``. A write that fails (a full
    disk) raises :class:`WriteError` naming ``path`` and leaves nothing behind.
    """
    arrays = {name: np.asarray(arr) for name, arr in datasets.items()}
    buf = io.BytesIO() if sum(a.nbytes for a in arrays.values()) <= IN_MEMORY_MAX_BYTES else None
    with atomic_path(path) as tmp:
        with h5py.File(tmp if buf is None else buf, "w") as f:
            _fill_h5(f, arrays, attrs, chunk_first_axis, compression)
        if buf is not None:
            tmp.write_bytes(buf.getbuffer())


def _fill_h5(f: h5py.File, arrays: Mapping[str, np.ndarray], attrs, chunk_first_axis: bool, compression) -> None:
    for name, arr in arrays.items():
        if arr.dtype.kind in "UO":
            f.create_dataset(name, data=arr.astype(object), dtype=h5py.string_dtype())
            continue
        kw: dict[str, Any] = {}
        if arr.ndim >= 2 and arr.shape[0] > 0 and chunk_first_axis:
            kw["chunks"] = (1,) + arr.shape[1:]
            if compression:
                kw["compression"] = compression
                if compression == "gzip":
                    kw["compression_opts"] = 4
                kw["shuffle"] = True
        f.create_dataset(name, data=arr, **kw)
    for k, v in (attrs or {}).items():
        f.attrs[k] = _attr_value(v)


def read_h5(path: str | os.PathLike, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Read datasets (all, or ``names``) of an HDF5 file into memory; strings come back as ``str``."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            keys = list(f.keys()) if names is None else names
            out = {}
            for k in keys:
                if k not in f:
                    raise StoreError(f"{path}: has no dataset '{k}' (has: {', '.join(f.keys())})")
                d = f[k]
                if h5py.check_string_dtype(d.dtype) is not None:
                    out[k] = np.array(d.asstr()[()], dtype=object)
                else:
                    out[k] = d[()]
            return out
    except OSError as e:
        raise StoreError(f"{path}: not a readable HDF5 file ({e})") from e


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """File attributes of an HDF5 file; JSON-encoded values are decoded."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            out = {}
            for k, v in f.attrs.items():
                if isinstance(v, bytes):
                    v = v.decode()
                if isinstance(v, str) and (v[:1] in ("[", "{") or v == "null"):
                    with contextlib.suppress(ValueError, TypeError):
                        v = json.loads(v)
                if isinstance(v, np.generic):
                    v = v.item()
                out[k] = v
            return out
    except OSError as e:
        raise StoreError(f"{path}: not a readable HDF5 file ({e})") from e


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def provenance(meta: Mapping[str, str] | None = None, **extra) -> dict:
    """Attributes every output records: advcam's version, when it was made, ``extra`` (what the stage knows),
    then the user's ``meta`` pairs (``--meta KEY=VALUE``)."""
    return {"advcam_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra, **dict(meta or {})}
