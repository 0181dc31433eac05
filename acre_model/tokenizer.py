"""Tokenizer of an HF-style folder (`tokenizer.json`) plus its chat template (`chat_template.jinja` or
`tokenizer_config.json`)."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as _HFTokenizer

from .errors import ModelLoadError

log = logging.getLogger(__name__)

# Between the cached document and a question, inside the same user turn.
QUESTION_SEPARATOR = "\n\n"
# Where newer HF models keep the chat template, beside tokenizer_config.json.
CHAT_TEMPLATE_FILE = "chat_template.jinja"


@dataclass
class ChatTurnIds:
    """Token ids of a chat prompt split where a cached document ends and a question begins."""

    prefix: list[int]  # template up to and including the document text
    suffix: list[int]  # question + end of user turn + assistant header (+ answer prefix)


def _read_chat_template(folder: Path, cfg: dict) -> str | None:
    """The folder's chat template: `chat_template.jinja` if present (it wins over the config, as in
    transformers), else `chat_template` of tokenizer_config.json; None when there is neither.

    The config may hold a list of named templates; the one named "default" is the chat template.
    """
    f = folder / CHAT_TEMPLATE_FILE
    if f.is_file():
        try:
            return f.read_text(encoding="utf-8") or None
        except (OSError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"{f}: unreadable ({e})") from None
    t = cfg.get("chat_template")
    if isinstance(t, list):
        t = next((d.get("template") for d in t if isinstance(d, dict) and d.get("name") == "default"), None)
    return t or None


def _raise_template_error(message: str):
    raise ModelLoadError(f"chat template: {message}")


class Tokenizer:
    def __init__(self, tk: _HFTokenizer, chat_template: str | None, bos_token: str | None,
                 eos_token: str | None, stop_tokens: list[str], add_bos: bool = False):
        self.tk = tk
        # Without a chat template, prompts are plain text: a model whose tokenizer adds BOS (Gemma: its
        # hidden states without one are far off) gets it written in front, since encode() adds nothing.
        self.add_bos = add_bos
        self.chat_template = chat_template
        self.bos_token, self.eos_token = bos_token, eos_token
        ids = [tk.token_to_id(t) for t in stop_tokens]
        self.stop_ids = sorted({i for i in ids if i is not None})
        self._template = None
        if chat_template:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise_template_error  # templates call it, as in transformers
            try:
                self._template = env.from_string(chat_template)
            except jinja2.TemplateError as e:
                raise ModelLoadError(f"chat template does not parse: {e}") from None

    @classmethod
    def from_folder(cls, folder: str | Path) -> "Tokenizer":
        folder = Path(folder)
        tj = folder / "tokenizer.json"
        if not tj.is_file():
            raise ModelLoadError(f"{folder}: tokenizer.json not found")
        try:
            tk = _HFTokenizer.from_file(str(tj))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise ModelLoadError(f"{tj}: unreadable tokenizer ({e})") from None
        cfg = {}
        tc = folder / "tokenizer_config.json"
        if tc.is_file():
            try:
                cfg = json.loads(tc.read_text())
            except json.JSONDecodeError as e:
                raise ModelLoadError(f"{tc}: unreadable ({e})") from None

        def tok(name):
            v = cfg.get(name)
            return v.get("content") if isinstance(v, dict) else v

        stops = [t for t in (tok("eos_token"), "<|im_end|>", "<|endoftext|>", "<|eot_id|>",
                             "<|end_of_text|>", "</s>", "<end_of_turn>") if t]
        template = _read_chat_template(folder, cfg)
        if template is None:
            log.warning("%s has no chat template (none in tokenizer_config.json, no %s): prompts are the "
                        "messages' plain text, which suits a base model but not a chat model",
                        folder, CHAT_TEMPLATE_FILE)
        return cls(tk, template, tok("bos_token"), tok("eos_token"), stops,
                   add_bos=bool(cfg.get("add_bos_token", False)))

    @property
    def has_chat_template(self) -> bool:
        """False for a model without a template: its prompts are the messages' plain text."""
        return self._template is not None

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Plain text to ids: no BOS/EOS added; special-token strings in `text` are recognised."""
        return self.tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self.tk.decode(ids, skip_special_tokens=skip_special)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if self._template is None:
            # No template (warned at load): plain concatenation, so base models still work.
            bos = self.bos_token if self.add_bos and self.bos_token else ""
            return bos + "\n".join(m["content"] for m in messages) + ("\n" if add_generation_prompt else "")
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token or "", eos_token=self.eos_token or "")

    def chat_ids(self, prompt: str) -> list[int]:
        return self.encode(self.apply_chat_template([{"role": "user", "content": prompt}]))

    def split_chat(self, document: str, question: str, answer_prefix: str = "") -> ChatTurnIds:
        """Ids of the chat prompt `document + question`, split at the document's end.

        The user turn is `document` followed by `question`; the two are tokenized separately so that no
        BPE merge straddles the boundary and every question on a document starts from the same cached
        state. The template is rendered with a unique marker where the question goes.
        """
        marker = "\x00ACRE_Q\x00"
        full = self.apply_chat_template([{"role": "user", "content": document + marker}])
        head, tail = full.split(marker, 1)
        return ChatTurnIds(self.encode(head), self.encode(question + tail + answer_prefix))

    def document_ids(self, document: str) -> list[int]:
        """Ids of the cached part of an ask prompt: the chat template up to the document's (stripped) end."""
        return self.split_chat(document.rstrip(), "").prefix

    def question_ids(self, question: str, answer_prefix: str = "") -> list[int]:
        """Ids of what follows the document at ask time: separator, question, end of the user turn,
        assistant header and the answer prefix."""
        return self.split_chat("", QUESTION_SEPARATOR + question.strip(), answer_prefix).suffix

    def prompt_ids(self, document: str, question: str, answer_prefix: str = "") -> ChatTurnIds:
        """The whole ask prompt as `document_ids` + `question_ids` (what a full re-prefill would run)."""
        return ChatTurnIds(self.document_ids(document), self.question_ids(question, answer_prefix))

    def document_token_span(self, document: str, char_span: tuple[int, int]) -> tuple[int, int]:
        """Token range [a, b) of `document_ids(document)` covering characters [s, e) of the document."""
        text = document.rstrip()
        head = self.apply_chat_template([{"role": "user", "content": text + "\x00"}]).split("\x00")[0]
        start = len(head) - len(text)
        enc = self.tk.encode(head, add_special_tokens=False)
        s, e = start + char_span[0], start + char_span[1]
        toks = [i for i, (a, b) in enumerate(enc.offsets) if a < e and b > s]
        if not toks:
            raise ValueError(f"character span {char_span} covers no token of the document")
        return toks[0], toks[-1] + 1
