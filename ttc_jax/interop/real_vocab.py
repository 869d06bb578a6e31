"""Real Llama 3 and Qwen2.5 vocabularies as Hugging Face tokenizer folders, built offline.

    python -m ttc_jax.interop.real_vocab --out .cache/real_vocab      # or `make vocab`
    folders = build(".cache/real_vocab")   # {"llama3.2-instruct": Path(...), ...}

The ``llama-cpp-python`` sdist on PyPI vendors vocab-only GGUF files of Llama 3
(``ggml-vocab-llama-bpe.gguf``) and Qwen2 (``ggml-vocab-qwen2.gguf``) and the real chat
templates of the models. ``build`` downloads that sdist once (``pip download``; only PyPI
is needed), reads the token lists and merges straight from the GGUF files with ``gguf``,
and writes folders laid out as the real models ship them:

  ``llama3.2-instruct``  Llama-3.2-Instruct (the policy of the Hugging Face study): 256 special
      added tokens 128000..128255 with their Llama 3.1+ names, vocabulary exactly 128256 ids,
      bos ``<|begin_of_text|>``, eos ``<|eot_id|>``, no pad token, generation_config
      ``eos_token_id`` [128001, 128008, 128009], the Llama 3.2 chat template.
  ``llama3.1-prm``       stand-in for RLHFlow/Llama3.1-8B-PRM-Deepseek-Data: the same
      vocabulary with the Llama 3.1 chat template.
  ``qwen2.5-instruct``   Qwen2.5-Instruct: the 22 added tokens 151643..151664, no bos token,
      eos ``<|im_end|>``, pad ``<|endoftext|>``, generation_config ``eos_token_id``
      [151645, 151643], embedding size 151936, the Qwen2.5 chat template.
  ``qwen2.5-base``       Qwen2.5 base: eos ``<|endoftext|>`` (the same template, as shipped).
  ``qwen2.5-math-prm``   stand-in for Qwen2.5-Math-PRM: the Qwen2.5 vocabulary plus the
      PRM-only special token ``<extra_0>`` (the step separator of that PRM). Its id here,
      151665 (the first free id), is OUR choice; the policy's tokenizer lacks the token.

The GGUF of Llama 3 carries Llama 3.0's special names (``<|reserved_special_token_2|>`` at
128004, ...) and the Qwen2 one carries ``[PAD151646]`` placeholders, so the Llama 3.1+ and
Qwen2.5 names are written here (``LLAMA31_SPECIAL``, ``QWEN25_SPECIAL``); the ids the
two generations share are checked against the GGUF.

Each ``config.json`` is a tiny decoder (2 layers, d_model 64) with the real ``vocab_size``
and special ids, so that tests can add random weights to a folder. Building is idempotent:
a stamp file records the sdist and builder version, a second call returns at once, and an
``fcntl`` lock makes concurrent builders (two pytest workers) wait for one another.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST_VERSION = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{SDIST_VERSION}"
BUILDER_VERSION = 1  # bump when the written folders change
MODELS = "vendor/llama.cpp/models/"
_NEEDED = ("ggml-vocab-llama-bpe.gguf", "ggml-vocab-qwen2.gguf",
           "templates/meta-llama-Llama-3.2-3B-Instruct.jinja",
           "templates/meta-llama-Llama-3.1-8B-Instruct.jinja",
           "templates/Qwen-Qwen2.5-7B-Instruct.jinja")
STAMP = ".real_vocab_stamp.json"
NAMES = ("llama3.2-instruct", "llama3.1-prm", "qwen2.5-instruct", "qwen2.5-base",
         "qwen2.5-math-prm")

# Llama 3.1 / 3.2: ids 128000..128255 (Llama 3.0 named 128004, 128005, 128008, 128010
# reserved tokens; 3.1 renamed them and renumbered the reserved ones).
LLAMA31_SPECIAL = (["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
                    "<|reserved_special_token_2|>", "<|start_header_id|>",
                    "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
                   + [f"<|reserved_special_token_{k}|>" for k in range(3, 248)])
LLAMA_FIRST_SPECIAL = 128000
LLAMA_VOCAB = 128256
# Qwen2.5: ids 151643..151664; as Qwen2.5 ships them, the tool-call and FIM tokens are added
# tokens with special=False (they decode as text), the others special=True.
QWEN25_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                  "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                  "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                  "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
                  "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                  "<|repo_name|>", "<|file_sep|>"]
QWEN_NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
                    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"}
QWEN_FIRST_SPECIAL = 151643
QWEN_EMBED = 151936
QWEN_PRM_TOKEN = "<extra_0>"
QWEN_PRM_TOKEN_ID = 151665  # ours: the first id after the Qwen2.5 added tokens

_LLAMA_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?"
                "[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
_QWEN_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?"
               "[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


# -- the sdist ---------------------------------------------------------------------------

def _download_sdist(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
           ":all:", f"llama-cpp-python=={SDIST_VERSION}", "-d", str(dest)]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"could not download the llama-cpp-python {SDIST_VERSION} sdist "
                           f"from PyPI ({' '.join(cmd)}):\n{e.stderr[-2000:]}\nDownload it "
                           f"by hand and pass sdist=<the .tar.gz> (--sdist)") from e
    found = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if not found:
        raise RuntimeError(f"pip download left no llama_cpp_python-*.tar.gz in {dest}")
    return found[0]


def _extract(sdist: Path, dest: Path) -> Path:
    """The needed GGUF and template files of ``sdist`` (a .tar.gz or an extracted folder)
    under ``dest``; returns the folder that holds them (the layout of ``models/``)."""
    if sdist.is_dir():
        root = sdist / MODELS if (sdist / MODELS).is_dir() else sdist
        missing = [n for n in _NEEDED if not (root / n).exists()]
        if missing:
            raise FileNotFoundError(f"{sdist}: missing {missing} (want an extracted "
                                    f"{SDIST_NAME} sdist or its {MODELS} folder)")
        return root
    with tarfile.open(sdist) as tar:
        members = {}
        for m in tar.getmembers():
            for n in _NEEDED:
                if m.isfile() and m.name.endswith("/" + MODELS + n):
                    members[n] = m
        missing = [n for n in _NEEDED if n not in members]
        if missing:
            raise FileNotFoundError(f"{sdist}: the archive lacks {missing}")
        for n, m in members.items():
            out = dest / n
            out.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return dest


# -- GGUF -> tokenizer.json --------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def _read_gguf(path: Path) -> tuple[list[str], list[str], list[int]]:
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    tokens = list(r.fields["tokenizer.ggml.tokens"].contents())
    merges = list(r.fields["tokenizer.ggml.merges"].contents())
    types = [int(t) for t in r.fields["tokenizer.ggml.token_type"].contents()]
    return tokens, merges, types


def _added(i: int, content: str, special: bool = True) -> dict:
    return {"id": i, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": special}


def _tokenizer_json(*, regular: list[str], merges: list[str], added: list[dict],
                    split: str, normalizer, post_processor, ignore_merges: bool) -> dict:
    vocab = {t: i for i, t in enumerate(regular)}
    for a in added:
        vocab[a["content"]] = a["id"]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": False}]},
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": ignore_merges,
                  "vocab": vocab, "merges": [m.split(" ", 1) for m in merges]},
    }


def _llama_tokenizer(gguf: Path) -> dict:
    tokens, merges, types = _read_gguf(gguf)
    if len(tokens) != LLAMA_VOCAB or types[LLAMA_FIRST_SPECIAL:] != [3] * 256:
        raise ValueError(f"{gguf}: not the Llama 3 vocabulary ({len(tokens)} tokens)")
    for k in (0, 1, 6, 7, 9):  # the ids whose names 3.0 and 3.1 share
        if tokens[LLAMA_FIRST_SPECIAL + k] != LLAMA31_SPECIAL[k]:
            raise ValueError(f"{gguf}: id {LLAMA_FIRST_SPECIAL + k} is "
                             f"{tokens[LLAMA_FIRST_SPECIAL + k]!r}, not {LLAMA31_SPECIAL[k]!r}")
    added = [_added(LLAMA_FIRST_SPECIAL + k, n) for k, n in enumerate(LLAMA31_SPECIAL)]
    bos = "<|begin_of_text|>"
    post = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
         "use_regex": True},
        {"type": "TemplateProcessing",
         "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                  {"Sequence": {"id": "A", "type_id": 0}},
                  {"SpecialToken": {"id": bos, "type_id": 1}},
                  {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {bos: {"id": bos, "ids": [LLAMA_FIRST_SPECIAL],
                                  "tokens": [bos]}}}]}
    return _tokenizer_json(regular=tokens[:LLAMA_FIRST_SPECIAL], merges=merges, added=added,
                           split=_LLAMA_SPLIT, normalizer=None, post_processor=post,
                           ignore_merges=True)


def _qwen_tokenizer(gguf: Path, extra: tuple[str, ...] = ()) -> dict:
    tokens, merges, types = _read_gguf(gguf)
    if len(tokens) != QWEN_EMBED or tokens[QWEN_FIRST_SPECIAL] != "<|endoftext|>":
        raise ValueError(f"{gguf}: not the Qwen2 vocabulary ({len(tokens)} tokens)")
    for k in (0, 1, 2):
        if tokens[QWEN_FIRST_SPECIAL + k] != QWEN25_SPECIAL[k]:
            raise ValueError(f"{gguf}: id {QWEN_FIRST_SPECIAL + k} is "
                             f"{tokens[QWEN_FIRST_SPECIAL + k]!r}, not {QWEN25_SPECIAL[k]!r}")
    names = QWEN25_SPECIAL + list(extra)
    added = [_added(QWEN_FIRST_SPECIAL + k, n, n not in QWEN_NOT_SPECIAL)
             for k, n in enumerate(names)]
    post = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
            "use_regex": False}
    return _tokenizer_json(regular=tokens[:QWEN_FIRST_SPECIAL], merges=merges, added=added,
                           split=_QWEN_SPLIT, normalizer={"type": "NFC"},
                           post_processor=post, ignore_merges=False)


# -- the folders -------------------------------------------------------------------------

def _tiny_config(arch: str, model_type: str, vocab_size: int, bos, eos, extra: dict) -> dict:
    cfg = {"architectures": [arch], "model_type": model_type, "vocab_size": vocab_size,
           "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
           "hidden_act": "silu", "max_position_embeddings": 131072 if model_type == "llama"
           else 32768,
           "bos_token_id": bos, "eos_token_id": eos, "torch_dtype": "float32",
           "_comment": "tiny shapes; the real vocab_size and special ids"}
    cfg.update(extra)
    return cfg


def _specs(models: Path) -> dict[str, dict]:
    tmpl = models / "templates"
    llama32 = (tmpl / "meta-llama-Llama-3.2-3B-Instruct.jinja").read_text()
    llama31 = (tmpl / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text()
    qwen = (tmpl / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
    llama_eos = [128001, 128008, 128009]
    llama_rope = {"rope_theta": 500000.0, "rms_norm_eps": 1e-5, "attention_bias": False,
                  "mlp_bias": False, "rope_scaling": {
                      "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
    qwen_extra = {"rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "use_sliding_window": False,
                  "tie_word_embeddings": True}
    llama_tcfg = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                  "clean_up_tokenization_spaces": True, "model_max_length": 131072,
                  "model_input_names": ["input_ids", "attention_mask"],
                  "tokenizer_class": "PreTrainedTokenizerFast"}
    qwen_tcfg = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                 "add_prefix_space": False, "clean_up_tokenization_spaces": False,
                 "errors": "replace", "model_max_length": 131072,
                 "split_special_tokens": False, "unk_token": None,
                 "tokenizer_class": "Qwen2Tokenizer"}
    return {
        "llama3.2-instruct": dict(
            kind="llama", tcfg={**llama_tcfg, "chat_template": llama32},
            gen={"bos_token_id": 128000, "eos_token_id": llama_eos, "do_sample": True,
                 "temperature": 0.6, "top_p": 0.9},
            cfg=_tiny_config("LlamaForCausalLM", "llama", LLAMA_VOCAB, 128000, llama_eos,
                             {**llama_rope, "tie_word_embeddings": True})),
        "llama3.1-prm": dict(
            kind="llama", tcfg={**llama_tcfg, "chat_template": llama31},
            gen={"bos_token_id": 128000, "eos_token_id": llama_eos, "do_sample": True,
                 "temperature": 0.6, "top_p": 0.9},
            cfg=_tiny_config("LlamaForCausalLM", "llama", LLAMA_VOCAB, 128000, llama_eos,
                             {**llama_rope, "tie_word_embeddings": False, "rope_scaling": {
                                 **llama_rope["rope_scaling"], "factor": 8.0}})),
        "qwen2.5-instruct": dict(
            kind="qwen", tcfg={**qwen_tcfg, "chat_template": qwen},
            gen={"bos_token_id": 151643, "pad_token_id": 151643,
                 "eos_token_id": [151645, 151643], "do_sample": True,
                 "repetition_penalty": 1.05, "temperature": 0.7, "top_p": 0.8, "top_k": 20},
            cfg=_tiny_config("Qwen2ForCausalLM", "qwen2", QWEN_EMBED, 151643, 151645,
                             qwen_extra)),
        "qwen2.5-base": dict(
            kind="qwen", tcfg={**qwen_tcfg, "eos_token": "<|endoftext|>", "chat_template": qwen},
            gen={"bos_token_id": 151643, "eos_token_id": 151643, "do_sample": False,
                 "max_new_tokens": 2048},
            cfg=_tiny_config("Qwen2ForCausalLM", "qwen2", QWEN_EMBED, 151643, 151643,
                             qwen_extra)),
        "qwen2.5-math-prm": dict(
            kind="qwen-prm", tcfg={**qwen_tcfg, "chat_template": qwen},
            gen={"bos_token_id": 151643, "pad_token_id": 151643,
                 "eos_token_id": [151645, 151643]},
            cfg=_tiny_config("Qwen2ForCausalLM", "qwen2", QWEN_EMBED, 151643, 151645,
                             {**qwen_extra, "tie_word_embeddings": False,
                              "_prm_token": f"{QWEN_PRM_TOKEN} = {QWEN_PRM_TOKEN_ID} (our id)"})),
    }


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _stamp_value() -> dict:
    return {"sdist": SDIST_NAME, "builder": BUILDER_VERSION, "folders": list(NAMES)}


def _is_built(out: Path) -> bool:
    try:
        ok = json.loads((out / STAMP).read_text()) == _stamp_value()
    except (OSError, ValueError):
        return False
    return ok and all((out / n / "tokenizer.json").exists() for n in NAMES)


def build(out_dir: str | os.PathLike, sdist: str | os.PathLike | None = None) -> dict[str, Path]:
    """Writes the folders of the module docstring under ``out_dir`` (once) and returns
    ``{name: folder}``.

    Args:
      out_dir: where the folders go (``.cache/real_vocab`` in this repo).
      sdist: the llama-cpp-python sdist (.tar.gz, or its extracted folder); None downloads
        it from PyPI with pip (or uses ``$TTC_LCPP_SDIST`` when set).
    """
    out = Path(out_dir).resolve()
    folders = {n: out / n for n in NAMES}
    if _is_built(out):
        return folders
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second builder waits here, then finds the stamp
        try:
            if _is_built(out):
                return folders
            _build_locked(out, sdist or os.environ.get("TTC_LCPP_SDIST"))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return folders


def _build_locked(out: Path, sdist) -> None:
    (out / STAMP).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="real_vocab_") as tmp:
        tmp = Path(tmp)
        src = Path(sdist) if sdist else _download_sdist(tmp / "dl")
        models = _extract(src, tmp / "models")
        llama = _llama_tokenizer(models / "ggml-vocab-llama-bpe.gguf")
        qwen = _qwen_tokenizer(models / "ggml-vocab-qwen2.gguf")
        qwen_prm = _qwen_tokenizer(models / "ggml-vocab-qwen2.gguf", extra=(QWEN_PRM_TOKEN,))
        assert qwen_prm["added_tokens"][-1]["id"] == QWEN_PRM_TOKEN_ID
        tokjson = {"llama": llama, "qwen": qwen, "qwen-prm": qwen_prm}
        for name, spec in _specs(models).items():
            stage = out / f".{name}.partial"
            shutil.rmtree(stage, ignore_errors=True)
            stage.mkdir()
            (stage / "tokenizer.json").write_text(
                json.dumps(tokjson[spec["kind"]], ensure_ascii=False), encoding="utf-8")
            tcfg = dict(spec["tcfg"])
            added = tokjson[spec["kind"]]["added_tokens"]
            tcfg["added_tokens_decoder"] = {str(a["id"]): {k: v for k, v in a.items()
                                                           if k != "id"} for a in added}
            _write_json(stage / "tokenizer_config.json", tcfg)
            _write_json(stage / "generation_config.json", spec["gen"])
            _write_json(stage / "config.json", spec["cfg"])
            (stage / "SOURCE.txt").write_text(
                f"Built by ttc_jax.interop.real_vocab (builder {BUILDER_VERSION}) from the "
                f"{SDIST_NAME} sdist's {MODELS} (vocab-only GGUF files and chat templates).\n")
            shutil.rmtree(out / name, ignore_errors=True)
            stage.rename(out / name)
    _read_gguf.cache_clear()
    _write_json(out / STAMP, _stamp_value())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (e.g. .cache/real_vocab)")
    p.add_argument("--sdist", default=None, help="a local llama-cpp-python sdist (.tar.gz "
                   "or extracted folder); default: pip download it from PyPI")
    a = p.parse_args(argv)
    for name, path in build(a.out, a.sdist).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
