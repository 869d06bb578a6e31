"""Chat prompts from a model folder's own template, rendered as transformers renders them.

    template = load_chat_template("/ckpt/Llama-3.2-1B-Instruct")     # None if it has none
    text = render_template(template, [{"role": "system", "content": SYSTEM},
                                      {"role": "user", "content": problem}],
                           bos_token="<|begin_of_text|>", date="26 Jul 2024")

The template is a Jinja2 program (``tokenizer_config.json`` key ``chat_template``, a string
or a list of ``{"name", "template"}`` of which "default" is used, or a
``chat_template.jinja`` file, which wins as in transformers). It is rendered like
``transformers``' ``apply_chat_template(..., tokenize=False)``: an
``ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`` with the
``loopcontrols`` extension, a ``tojson`` filter that does not escape HTML, and the globals
``raise_exception``, ``strftime_now`` and ``namespace``; the variables are ``messages``,
``tools``, ``documents``, ``add_generation_prompt`` and the special tokens (``bos_token``,
``eos_token``, ...).

``strftime_now(fmt)`` formats today's date, as transformers does, unless ``date`` is given:
Llama 3.1/3.2 templates write "Cutting Knowledge Date: December 2023\\nToday Date: <date>",
so a fixed ``date`` (a ``datetime.date``/``datetime``, or a string such as
"26 Jul 2024" returned for every format) makes prompts reproducible.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from ttc_jax.interop.files import read_text

TEMPLATE_FILE = "chat_template.jinja"


def template_from_config(value, where: str | Path = "tokenizer_config.json") -> str | None:
    """The template of a ``chat_template`` config value: a string, or a list of
    ``{"name", "template"}`` (the one named "default"), or None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
        if "default" in named:
            return named["default"]
        raise ValueError(f"{where}: chat_template lists templates {sorted(map(str, named))} "
                         f"but none named 'default'")
    raise ValueError(f"{where}: chat_template is a {type(value).__name__}, expected a string "
                     f"or a list of {{name, template}}")


def load_chat_template(folder: str | Path, tokenizer_config: Mapping | None = None) -> str | None:
    """The chat template of a model folder (``chat_template.jinja`` first, then
    ``tokenizer_config.json``), or None when it has none.

    Args:
      tokenizer_config: the already-parsed ``tokenizer_config.json`` (read if None).
    """
    folder = Path(folder)
    file = folder / TEMPLATE_FILE
    if file.exists():
        return read_text(file)
    cfg_path = folder / "tokenizer_config.json"
    if tokenizer_config is None:
        if not cfg_path.exists():
            return None
        try:
            tokenizer_config = json.loads(read_text(cfg_path))
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
    return template_from_config(tokenizer_config.get("chat_template"), cfg_path)


@functools.lru_cache(maxsize=16)
def _compile(template: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    class _Generation(jinja2.ext.Extension):  # `{% generation %}` blocks render as-is
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_run"), [], [], body
                                          ).set_lineno(lineno)

        def _run(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["namespace"] = jinja2.utils.Namespace
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ValueError(f"the chat template does not parse (line {e.lineno}: {e.message})"
                         ) from None


def _strftime(date):
    if date is None:
        return lambda fmt: _dt.datetime.now().strftime(fmt)
    if isinstance(date, str):
        return lambda fmt: date
    if isinstance(date, _dt.date) and not isinstance(date, _dt.datetime):
        date = _dt.datetime(date.year, date.month, date.day)
    return lambda fmt: date.strftime(fmt)


def messages_of(*, user: str, system: str | None = None) -> list[dict]:
    """``[{"role": "system", ...}, {"role": "user", ...}]`` (the system one if given)."""
    out = [] if system is None else [{"role": "system", "content": system}]
    return out + [{"role": "user", "content": user}]


def render_template(template: str, messages: Sequence[Mapping], *,
                    add_generation_prompt: bool = True, date=None, tools=None,
                    documents=None, bos_token: str | None = None,
                    eos_token: str | None = None, **special_tokens) -> str:
    """``template`` rendered for ``messages`` (what ``apply_chat_template(messages,
    tokenize=False, add_generation_prompt=...)`` returns).

    Args:
      date: what ``strftime_now`` returns: None (today, as transformers), a
        ``datetime.date``/``datetime`` (formatted as asked) or a fixed string.
      bos_token, eos_token, **special_tokens: the folder's special-token strings
        (``pad_token``, ``unk_token``...), visible to the template as variables; None ones
        are left out, as transformers does.
    """
    import jinja2

    compiled = _compile(template)
    tokens = {k: v for k, v in dict(special_tokens, bos_token=bos_token,
                                    eos_token=eos_token).items() if v is not None}
    msgs = [dict(m) for m in messages]
    try:
        return compiled.render(messages=msgs, tools=tools, documents=documents,
                               add_generation_prompt=add_generation_prompt,
                               strftime_now=_strftime(date), **tokens)
    except jinja2.exceptions.TemplateError as e:
        raise ValueError(f"the chat template failed: {e}") from None
