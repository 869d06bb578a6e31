"""Reading a model folder's text and JSON files with errors that name the file.

Every Hugging Face file we read (``config.json``, ``tokenizer.json``,
``tokenizer_config.json``, ``generation_config.json``, the safetensors index, a chat
template) goes through here: a UTF-8 byte-order mark is accepted; a byte that is not UTF-8,
text that is not JSON, or JSON that is not an object is a ValueError with the file, the
line and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_text(path: str | Path, what: str | None = None) -> str:
    """The UTF-8 text of ``path`` (a leading byte-order mark dropped)."""
    path = Path(path)
    what = what or path.name
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{path} line {line}: byte 0x{data[e.start]:02x} at offset {e.start} "
                         f"is not UTF-8; the {what} is corrupt or in another encoding: "
                         f"re-download it from the model's repository (or re-save it as "
                         f"UTF-8)") from None


def read_json(path: str | Path, what: str | None = None, *, missing_ok: bool = False) -> dict:
    """The JSON object in ``path`` ({} for a missing file when ``missing_ok``)."""
    path = Path(path)
    what = what or path.name
    if missing_ok and not path.exists():
        return {}
    try:
        raw = json.loads(read_text(path, what))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} line {e.lineno} column {e.colno}: not valid JSON "
                         f"({e.msg}); the {what} is corrupt or truncated: re-download it from "
                         f"the model's repository") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} holds a JSON {type(raw).__name__}, not an object; is it "
                         f"the model's {what}? re-download it")
    return raw
