"""Hugging Face ``tokenizer.json`` behind our Tokenizer protocol, and chat prompts.

    tok = HFTokenizer.from_folder("/ckpt/Llama-3.2-1B-Instruct")
    text = render_chat("llama3", system=SYSTEM, user=problem)
    ids = tok.encode(text)          # the rendered text already starts with bos

Only the ``tokenizers`` library is used (no transformers at run time). Special ids come
from ``tokenizer_config.json`` / ``generation_config.json`` / ``config.json`` when the
folder has them, or from the arguments.

Search bans ``pad_id`` and ``bos_id`` from sampling, so the pad id must differ from every
eos id: Llama 3 has no pad token, and ``<|finetune_right_pad_id|>`` (3.1+) or a reserved
special token is used instead. A tokenizer without a bos token (Qwen) reports
``bos_id = pad_id`` and ``encode(add_bos=True)`` adds nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

CHAT_FORMATS = ("llama3", "qwen")
# Tokens that are safe pads when the tokenizer names none (never produced by the model).
_PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|reserved_special_token_0|>",
                   "<|endoftext|>", "<pad>", "[PAD]")


def _token_name(value) -> str | None:
    if isinstance(value, dict):  # {"content": "<|eot_id|>", ...}
        return value.get("content")
    return value


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` with our protocol's special ids.

    Attributes:
      vocab_size: ids the tokenizer knows (added tokens included); the model's embedding
        may be larger.
      pad_id, bos_id, eos_id: see the module docstring; ``eos_ids`` lists every id that
        ends a generation (``eos_id`` is the first).
      step_delimiter_id: the single token of ``step_delimiter`` ("\\n\\n"), or None.
    """

    def __init__(self, tokenizer, *, eos_ids: Sequence[int], pad_id: int,
                 bos_id: int | None = None, step_delimiter: str | None = "\n\n"):
        if not eos_ids:
            raise ValueError("no eos id: pass eos_ids (e.g. the id of <|eot_id|>)")
        if pad_id in eos_ids:
            raise ValueError(f"pad_id={pad_id} is also an eos id; search never samples the "
                             f"pad id, so it must differ (pick an unused special token)")
        self._tok = tokenizer
        self.eos_ids = tuple(int(i) for i in eos_ids)
        self.eos_id = self.eos_ids[0]
        self.pad_id = int(pad_id)
        self.has_bos = bos_id is not None
        self.bos_id = int(bos_id) if bos_id is not None else self.pad_id
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.step_delimiter = step_delimiter
        self.step_delimiter_id = None
        if step_delimiter is not None:
            ids = self.encode(step_delimiter)
            self.step_delimiter_id = ids[0] if len(ids) == 1 else None
        self._special = {self.pad_id, self.bos_id, *self.eos_ids}

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_folder(cls, path: str | Path, *, eos: Sequence[str] | None = None,
                    pad: str | None = None, bos: str | None = None,
                    step_delimiter: str | None = "\n\n") -> HFTokenizer:
        """Loads ``<path>/tokenizer.json`` (or a path to the file itself).

        Args:
          eos, pad, bos: token strings overriding what the folder's configs say.
        """
        from tokenizers import Tokenizer  # an optional dependency (the 'hf' extra)

        path = Path(path)
        file = path if path.is_file() else path / "tokenizer.json"
        if not file.exists():
            raise FileNotFoundError(f"no tokenizer.json at {path}; point at a Hugging Face "
                                    f"model folder that has one")
        folder = file.parent
        tok = Tokenizer.from_file(str(file))
        tcfg = _read_json(folder / "tokenizer_config.json")
        gen = _read_json(folder / "generation_config.json")
        mcfg = _read_json(folder / "config.json")

        def tid(name: str) -> int:
            i = tok.token_to_id(name)
            if i is None:
                raise ValueError(f"token {name!r} is not in {file}")
            return i

        if eos is not None:
            eos_ids = [tid(e) for e in eos]
        else:
            eos_ids = []
            name = _token_name(tcfg.get("eos_token"))
            if name is not None:
                eos_ids.append(tid(name))
            for src in (gen, mcfg):
                e = src.get("eos_token_id")
                for i in ([] if e is None else e if isinstance(e, list) else [e]):
                    if int(i) not in eos_ids:
                        eos_ids.append(int(i))
        if bos is not None:
            bos_id = tid(bos)
        else:
            name = _token_name(tcfg.get("bos_token"))
            bos_id = tid(name) if name is not None else mcfg.get("bos_token_id")
        if pad is not None:
            pad_id = tid(pad)
        else:
            name = _token_name(tcfg.get("pad_token"))
            pad_id = tid(name) if name is not None else None
            if pad_id is None or pad_id in eos_ids:
                pad_id = next((tok.token_to_id(c) for c in _PAD_CANDIDATES
                               if tok.token_to_id(c) is not None
                               and tok.token_to_id(c) not in eos_ids), None)
            if pad_id is None:
                raise ValueError(f"{folder}: no pad token distinct from eos; pass pad=<an "
                                 f"unused special token>")
        return cls(tok, eos_ids=eos_ids, pad_id=pad_id, bos_id=bos_id,
                   step_delimiter=step_delimiter)

    # -- the protocol ---------------------------------------------------------------------

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Ids of ``text`` (special tokens written in the text, e.g. ``<|eot_id|>``, become
        their ids; no template is added)."""
        ids = list(self._tok.encode(text, add_special_tokens=False).ids)
        if add_bos and self.has_bos:
            ids.insert(0, self.bos_id)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special:
            ids = [i for i in ids if i not in self._special]
        return self._tok.decode(ids, skip_special_tokens=skip_special)

    def decode_until_eos(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        cut = next((k for k, i in enumerate(ids) if i in self.eos_ids), len(ids))
        return self.decode(ids[:cut], skip_special=True)


def render_chat(fmt: str, *, user: str, system: str | None = None,
                add_generation_prompt: bool = True) -> str:
    """A single-turn chat prompt (system + user) in a model family's format.

    ``llama3``: ``<|begin_of_text|>`` then ``<|start_header_id|>role<|end_header_id|>\\n\\n
    text<|eot_id|>`` per message (the plain Llama 3 format, without 3.1's date lines).
    ``qwen``: ``<|im_start|>role\\ntext<|im_end|>\\n`` per message (ChatML).
    The generation prompt opens the assistant turn.
    """
    turns = ([("system", system)] if system is not None else []) + [("user", user)]
    if fmt == "llama3":
        out = "<|begin_of_text|>" + "".join(
            f"<|start_header_id|>{r}<|end_header_id|>\n\n{t.strip()}<|eot_id|>" for r, t in turns)
        return out + ("<|start_header_id|>assistant<|end_header_id|>\n\n"
                      if add_generation_prompt else "")
    if fmt == "qwen":
        out = "".join(f"<|im_start|>{r}\n{t}<|im_end|>\n" for r, t in turns)
        return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")
    raise ValueError(f"chat format {fmt!r} is unknown; choose one of {list(CHAT_FORMATS)}")
