"""Hugging Face ``tokenizer.json`` behind our Tokenizer protocol, and chat prompts.

    tok = HFTokenizer.from_folder("/ckpt/Llama-3.2-1B-Instruct")
    text = tok.render_chat(system=SYSTEM, user=problem)   # the folder's own chat template
    ids = tok.encode(text)          # the rendered text already starts with bos

Only the ``tokenizers`` library (and ``jinja2`` for chat templates) is used, no
transformers at run time. Special ids come from ``tokenizer_config.json`` /
``generation_config.json`` / ``config.json`` when the folder has them, or from the
arguments:

- ``eos_ids``: the tokenizer_config ``eos_token`` (the chat turn end, ``<|eot_id|>`` /
  ``<|im_end|>``) first, then every ``eos_token_id`` of generation_config.json and
  config.json, in that order; ``eos_id`` is the first.
- ``bos_id``: the folder's bos token, or None when it has none (Qwen: ``bos_token: null``;
  ``has_bos`` is False). An eos id is never used as bos (Qwen's config.json names
  ``<|endoftext|>`` as bos_token_id, which is also an eos).
- ``pad_id``: search never samples the pad id, so it must differ from every eos id. The
  folder's pad token when it is not an eos, else an unused special token of the
  vocabulary (``_PAD_CANDIDATES``: ``<|finetune_right_pad_id|>`` for Llama 3.1+,
  ``<|vision_pad|>`` / ``<|fim_pad|>`` for Qwen2.5, reserved tokens...).

``step_delimiter_ids`` lists EVERY token whose text contains the step separator ("\\n\\n"):
byte-level BPE merges the separator with what precedes it (Llama 3: ".\\n\\n" is one token,
382), so a step ends with any of them (``step_delimiter_id`` is the separator alone).
``vocab_bytes()`` is each id's raw bytes, for on-device text matching.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

from ttc_jax.interop.files import read_json, read_text

CHAT_FORMATS = ("llama3", "qwen")
# Tokens that are safe pads when the tokenizer names none (never produced by the model).
_PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|vision_pad|>", "<|fim_pad|>",
                   "<|reserved_special_token_0|>", "<|reserved_special_token_2|>",
                   "<|endoftext|>", "<pad>", "[PAD]")


def _token_name(value) -> str | None:
    if isinstance(value, dict):  # {"content": "<|eot_id|>", ...}
        return value.get("content")
    return value


def _read_json(path: Path) -> dict:
    return read_json(path, missing_ok=True)


def _ids(value) -> list[int]:
    return [] if value is None else [int(i) for i in (value if isinstance(value, list)
                                                      else [value])]


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's unicode -> byte table (byte-level BPE writes each byte as one character)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` with our protocol's special ids.

    Attributes:
      vocab_size: ids the tokenizer knows (added tokens included); the model's embedding
        may be larger.
      pad_id, bos_id, eos_id, eos_ids, has_bos: see the module docstring (``bos_id`` is None
        when the tokenizer has no bos token).
      step_delimiter_id: the single token of ``step_delimiter`` ("\\n\\n"), or None.
      step_delimiter_ids: every id whose text contains ``step_delimiter`` (sorted).
      chat_template: the folder's Jinja chat template, or None.
      special_tokens: the folder's special-token strings (bos_token, eos_token, pad_token,
        unk_token) as a chat template sees them.
      chat_date: what the template's ``strftime_now`` returns (None: today); set a fixed
        date (e.g. "26 Jul 2024" or a ``datetime.date``) for reproducible prompts.
    """

    def __init__(self, tokenizer, *, eos_ids: Sequence[int], pad_id: int,
                 bos_id: int | None = None, step_delimiter: str | None = "\n\n",
                 chat_template: str | None = None,
                 special_tokens: Mapping[str, str | None] | None = None,
                 name: str = "tokenizer"):
        if not eos_ids:
            raise ValueError("no eos id: pass eos_ids (e.g. the id of <|eot_id|>)")
        if pad_id in eos_ids:
            raise ValueError(f"pad_id={pad_id} is also an eos id; search never samples the "
                             f"pad id, so it must differ (pick an unused special token)")
        if bos_id is not None and bos_id in eos_ids:
            raise ValueError(f"bos_id={bos_id} is also an eos id; search never samples bos, "
                             f"so the model could never end: pass bos_id=None")
        self._tok = tokenizer
        self.name = name
        self.eos_ids = tuple(dict.fromkeys(int(i) for i in eos_ids))
        self.eos_id = self.eos_ids[0]
        self.pad_id = int(pad_id)
        self.has_bos = bos_id is not None
        self.bos_id = int(bos_id) if bos_id is not None else None
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens or {})
        self.chat_date = None
        self.step_delimiter = step_delimiter
        self.step_delimiter_id = None
        self._step_delimiter_ids = None
        self._vocab_bytes = None
        if step_delimiter is not None:
            ids = self.encode(step_delimiter)
            self.step_delimiter_id = ids[0] if len(ids) == 1 else None
        self._special = {i for i in (self.pad_id, self.bos_id, *self.eos_ids) if i is not None}

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_folder(cls, path: str | Path, *, eos: Sequence[str] | None = None,
                    pad: str | None = None, bos: str | None = None,
                    step_delimiter: str | None = "\n\n") -> HFTokenizer:
        """Loads ``<path>/tokenizer.json`` (or a path to the file itself) and the folder's
        configs and chat template.

        Args:
          eos, pad, bos: token strings overriding what the folder's configs say (``bos=""``:
            no bos token).
        """
        from tokenizers import Tokenizer  # an optional dependency (the 'hf' extra)

        from ttc_jax.interop.chat import TEMPLATE_FILE, load_chat_template, template_from_config

        path = Path(path)
        file = path if path.is_file() else path / "tokenizer.json"
        if not file.exists():
            raise FileNotFoundError(f"no tokenizer.json at {path}; point at a Hugging Face "
                                    f"model folder that has one")
        folder = file.parent
        try:
            tok = Tokenizer.from_str(read_text(file))
        except ValueError:
            raise
        except Exception as e:  # tokenizers raises its own Exception type
            raise ValueError(f"{file}: not a valid tokenizer.json ({str(e)[:300]}); the file "
                             f"is damaged or truncated: re-download it from the model's "
                             f"repository") from None
        tcfg = _read_json(folder / "tokenizer_config.json")
        gen = _read_json(folder / "generation_config.json")
        mcfg = _read_json(folder / "config.json")

        def tid(name: str, where) -> int:
            i = tok.token_to_id(name)
            if i is None:
                raise ValueError(f"token {name!r} ({where}) is not in {file}")
            return i

        if eos is not None:
            eos_ids = [tid(e, "eos") for e in eos]
        else:
            eos_ids = []
            name = _token_name(tcfg.get("eos_token"))
            if name is not None:
                eos_ids.append(tid(name, f"eos_token of {folder / 'tokenizer_config.json'}"))
            for src in (gen, mcfg):
                eos_ids += _ids(src.get("eos_token_id"))
            eos_ids = list(dict.fromkeys(eos_ids))
        if bos is not None:
            bos_id = tid(bos, "bos") if bos else None
        elif "bos_token" in tcfg:  # null: the tokenizer has no bos token (Qwen)
            name = _token_name(tcfg["bos_token"])
            bos_id = tid(name, "bos_token") if name is not None else None
        else:
            bos_id = next(iter(_ids(mcfg.get("bos_token_id")) or _ids(gen.get("bos_token_id"))),
                          None)
        if bos_id is not None and bos_id in eos_ids:
            bos_id = None  # never an eos as bos: search bans bos, the model could not end
        if pad is not None:
            pad_id = tid(pad, "pad")
        else:
            name = _token_name(tcfg.get("pad_token"))
            pad_id = tid(name, "pad_token") if name is not None else next(iter(
                _ids(gen.get("pad_token_id")) or _ids(mcfg.get("pad_token_id"))), None)
            if pad_id is None or pad_id in eos_ids or pad_id == bos_id:
                pad_id = _safe_pad(tok, {*eos_ids, bos_id})
            if pad_id is None:
                raise ValueError(f"{folder}: no pad token distinct from eos; pass pad=<an "
                                 f"unused special token>")
        if (folder / TEMPLATE_FILE).exists():
            template = load_chat_template(folder, tcfg)
        else:
            template = template_from_config(tcfg.get("chat_template"),
                                            folder / "tokenizer_config.json")
        special = {k: _token_name(tcfg.get(k)) for k in
                   ("bos_token", "eos_token", "pad_token", "unk_token")}
        return cls(tok, eos_ids=eos_ids, pad_id=pad_id, bos_id=bos_id,
                   step_delimiter=step_delimiter, chat_template=template,
                   special_tokens=special, name=str(folder))

    # -- the protocol ---------------------------------------------------------------------

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(int(i))

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Ids of ``text`` (special tokens written in the text, e.g. ``<|eot_id|>``, become
        their ids; no template is added). ``add_bos`` adds nothing to a text that already
        starts with bos (a prompt rendered from a chat template)."""
        ids = list(self._tok.encode(text, add_special_tokens=False).ids)
        if add_bos and self.has_bos and ids[:1] != [self.bos_id]:
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

    # -- the vocabulary -------------------------------------------------------------------

    @property
    def step_delimiter_ids(self) -> tuple[int, ...]:
        """Every id whose text contains ``step_delimiter`` (sorted; computed once): in
        Llama 3, 588 ids ("\\n\\n" 271, ".\\n\\n" 382, ":\\n\\n", "$\\n\\n", "\\n\\n\\n"...)."""
        if self._step_delimiter_ids is None:
            sep = (self.step_delimiter or "").encode("utf-8")
            self._step_delimiter_ids = () if not sep else tuple(
                i for i, b in enumerate(self.vocab_bytes()) if sep in b)
        return self._step_delimiter_ids

    def vocab_bytes(self) -> list[bytes]:
        """The raw bytes of each id's text (index = id, ``vocab_size`` entries; cached).

        Special added tokens (``<|eot_id|>``...) carry no text and give b""; added tokens
        that are not special (Qwen2.5's ``<tool_call>``) give their text. Byte-level BPE
        strings map back through GPT-2's byte table, so a token holding part of a UTF-8
        character gives its true bytes; ids the tokenizer lacks give b"".
        """
        if self._vocab_bytes is None:
            self._vocab_bytes = self._build_vocab_bytes()
        return self._vocab_bytes

    def _build_vocab_bytes(self) -> list[bytes]:
        byte_level = "ByteLevel" in f"{self._tok.pre_tokenizer!r} {self._tok.decoder!r}"
        byte_fallback = bool(getattr(self._tok.model, "byte_fallback", False))
        out = [b""] * self.vocab_size
        table = _byte_decoder()
        for text, i in self._tok.get_vocab(with_added_tokens=False).items():
            if i >= self.vocab_size:
                continue
            if byte_level:
                try:
                    out[i] = bytes(table[c] for c in text)
                    continue
                except KeyError:
                    pass
            if byte_fallback and len(text) == 6 and text.startswith("<0x") \
                    and text.endswith(">"):
                out[i] = bytes([int(text[3:5], 16)])
            else:
                out[i] = text.replace("\u2581", " ").encode("utf-8")  # SentencePiece space
        for i, added in self._tok.get_added_tokens_decoder().items():
            if i < self.vocab_size:
                out[i] = b"" if added.special else added.content.encode("utf-8")
        return out

    def special_token_names(self) -> dict[int, str]:
        """{id: text} of the special added tokens."""
        return {i: a.content for i, a in self._tok.get_added_tokens_decoder().items()
                if a.special}

    def vocab_compatible(self, other: HFTokenizer) -> None:
        """Raises a ValueError unless ``other`` (a PRM's tokenizer) reads every id of this
        one (the policy's) as the same text; see ``check_compatible``."""
        check_compatible(self, other)

    # -- chat prompts ---------------------------------------------------------------------

    def chat_format(self) -> str | None:
        """The built-in format (``render_chat``) this vocabulary fits, or None."""
        if self.token_to_id("<|start_header_id|>") is not None:
            return "llama3"
        if self.token_to_id("<|im_start|>") is not None:
            return "qwen"
        return None

    def render_chat(self, messages: Sequence[Mapping] | None = None, *,
                    system: str | None = None, user: str | None = None,
                    add_generation_prompt: bool = True, date=None,
                    fmt: str | None = None) -> str:
        """A chat prompt from the folder's own template (as transformers'
        ``apply_chat_template(messages, tokenize=False)`` renders it).

        Args:
          messages: ``[{"role", "content"}...]``, or ``system``/``user`` for one turn.
          date: what ``strftime_now`` returns (default ``self.chat_date``; None: today).
          fmt: the built-in format to use when the folder has no template (default: the
            one ``chat_format()`` guesses from the vocabulary).
        """
        from ttc_jax.interop.chat import messages_of, render_template

        if messages is None:
            if user is None:
                raise ValueError("pass messages, or user= (and system=)")
            messages = messages_of(system=system, user=user)
        elif system is not None or user is not None:
            raise ValueError("pass messages or system/user, not both")
        if self.chat_template is not None:
            return render_template(self.chat_template, messages,
                                   add_generation_prompt=add_generation_prompt,
                                   date=self.chat_date if date is None else date,
                                   **self.special_tokens)
        fmt = fmt or self.chat_format()
        if fmt is None:
            raise ValueError(f"{self.name} has no chat template and no built-in format fits "
                             f"its vocabulary; pass fmt= (one of {list(CHAT_FORMATS)})")
        roles = [m["role"] for m in messages]
        if roles not in (["user"], ["system", "user"]):
            raise ValueError(f"the built-in {fmt!r} format renders one system + user turn, "
                             f"got roles {roles}")
        sys_msg = messages[0]["content"] if roles[0] == "system" else None
        return render_chat(fmt, system=sys_msg, user=messages[-1]["content"],
                           add_generation_prompt=add_generation_prompt)


def _safe_pad(tok, banned: set) -> int | None:
    for c in _PAD_CANDIDATES:
        i = tok.token_to_id(c)
        if i is not None and i not in banned:
            return i
    reserved = sorted(i for i, a in tok.get_added_tokens_decoder().items()
                      if a.special and "reserved" in a.content and i not in banned)
    return reserved[0] if reserved else None


def check_compatible(policy_tok: HFTokenizer, prm_tok: HFTokenizer, *,
                     show: int = 5) -> None:
    """Raises a ValueError when the PRM's tokenizer reads some policy id as other text.

    Every policy id must have the same bytes in both (``vocab_bytes``), and a special
    token the same name. Ids only the PRM has (Qwen2.5-Math-PRM's ``<extra_0>``) are fine:
    the policy never produces them.
    """
    pb, qb = policy_tok.vocab_bytes(), prm_tok.vocab_bytes()
    ps, qs = policy_tok.special_token_names(), prm_tok.special_token_names()
    bad = [i for i in range(len(pb))
           if i >= len(qb) or pb[i] != qb[i] or ps.get(i) != qs.get(i)]
    if not bad:
        return

    def show_id(tok, b, s, i):
        if i >= len(b):
            return "missing"
        return s[i] if i in s else repr(b[i].decode("utf-8", "backslashreplace"))

    rows = "; ".join(f"id {i}: policy {show_id(policy_tok, pb, ps, i)} vs PRM "
                     f"{show_id(prm_tok, qb, qs, i)}" for i in bad[:show])
    raise ValueError(f"the policy ({policy_tok.name}, {len(pb)} ids) and PRM ({prm_tok.name}, "
                     f"{len(qb)} ids) tokenizers disagree on {len(bad)} policy ids, e.g. "
                     f"{rows}. The PRM must score the policy's own token ids: pair them with "
                     f"the same vocabulary (Llama 3 with Llama 3, Qwen2.5 with Qwen2.5)")


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
