"""A dependency-free reader of safetensors checkpoints, single file or sharded.

A safetensors file is an 8-byte little-endian header size, a JSON header (name ->
dtype, shape, byte offsets) and the raw tensor bytes. Tensors are read as views of a
memory map, so a tensor is materialised on the host only when it is used (and bf16 is
read as ``ml_dtypes.bfloat16``, which numpy alone cannot name). A sharded checkpoint is
several such files listed by ``model.safetensors.index.json`` (``weight_map``).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from ttc_jax.interop.files import read_json

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


_REDOWNLOAD = "the download was cut off or the file is corrupt: re-download it"


def _read_header(path: Path) -> tuple[dict, int]:
    """(name -> dtype/shape/data_offsets, the byte where tensor data starts), checked
    against the file's size so a truncated file fails here, naming itself."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path} is not a safetensors file (shorter than 8 bytes); "
                             f"{_REDOWNLOAD}")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise ValueError(f"{path} is truncated or not a safetensors file: its header "
                             f"claims {n} bytes but the file holds {size}; {_REDOWNLOAD}")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: the safetensors header is not valid JSON ({e}); "
                             f"{_REDOWNLOAD}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header is not a JSON object; {_REDOWNLOAD}")
    header.pop("__metadata__", None)
    start = 8 + n
    for name, info in header.items():
        try:
            lo, hi = (int(x) for x in info["data_offsets"])
            shape = [int(x) for x in info["shape"]]
            dtype = info["dtype"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: tensor {name!r} has a malformed header entry {info!r}; "
                             f"{_REDOWNLOAD}") from None
        if start + hi > size:
            raise ValueError(f"{path} is truncated: tensor {name!r} needs bytes up to "
                             f"{start + hi} but the file holds {size}; {_REDOWNLOAD}")
        if dtype in _DTYPES and hi - lo != int(np.prod(shape)) * np.dtype(_DTYPES[dtype]).itemsize:
            raise ValueError(f"{path}: tensor {name!r} of shape {shape} {dtype} spans "
                             f"{hi - lo} bytes, which does not match; {_REDOWNLOAD}")
    return header, start


class SafetensorsCheckpoint:
    """All tensors of a checkpoint folder (or one ``.safetensors`` file), by name."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.is_file():
            files = [path]
        elif (path / INDEX).exists():

            weight_map = read_json(path / INDEX, INDEX).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{path / INDEX} has no 'weight_map' (tensor name -> shard "
                                 f"file); re-download it")
            files = [path / f for f in sorted(set(weight_map.values()))]
            missing = [str(f) for f in files if not f.exists()]
            if missing:
                raise FileNotFoundError(f"{path / INDEX} lists shard files that are missing: "
                                        f"{missing}; download every shard of the checkpoint")
        elif (path / SINGLE).exists():
            files = [path / SINGLE]
        else:
            found = sorted(p.name for p in path.glob("*.safetensors"))
            if len(found) == 1:
                files = [path / found[0]]
            else:
                raise FileNotFoundError(
                    f"no {SINGLE} or {INDEX} in {path} (found {found or 'no .safetensors'}); "
                    f"point at a Hugging Face checkpoint folder with safetensors weights")
        self.path = path
        self._where: dict[str, tuple[Path, dict, int]] = {}
        for f in files:
            header, start = _read_header(f)
            for name, info in header.items():
                self._where[name] = (f, info, start)
        self._maps: dict[Path, np.memmap] = {}

    def names(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._where[self._check(name)][1]["shape"])

    def _check(self, name: str) -> str:
        if name not in self._where:
            raise KeyError(f"tensor {name!r} is missing from the checkpoint at {self.path}; "
                           f"is it the architecture the config says?")
        return name

    def get(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a read-only numpy view of the file (no copy)."""
        f, info, start = self._where[self._check(name)]
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {info['dtype']}, which is not "
                             f"supported; supported: {sorted(_DTYPES)}")
        if f not in self._maps:
            self._maps[f] = np.memmap(f, dtype=np.uint8, mode="r")
        lo, hi = info["data_offsets"]
        buf = self._maps[f][start + lo:start + hi]
        return buf.view(_DTYPES[info["dtype"]]).reshape(info["shape"])


def save_safetensors(path: str | Path, tensors: dict[str, np.ndarray],
                     metadata: dict[str, str] | None = None) -> None:
    """Writes ``tensors`` (name -> numpy array) as one safetensors file (as the
    ``safetensors`` library lays it out: sorted names, 8-byte aligned header)."""
    names = {np.dtype(v): k for k, v in _DTYPES.items()}
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        if a.dtype not in names:
            raise ValueError(f"tensor {name!r}: dtype {a.dtype} cannot be written; use one "
                             f"of {sorted(_DTYPES)}")
        b = a.tobytes()
        header[name] = {"dtype": names[a.dtype], "shape": list(a.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = dict(metadata)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)
