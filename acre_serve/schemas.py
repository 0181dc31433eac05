"""Request bodies as typed models. Field names are the Python API's (`Engine.ask`, `Engine.ingest`).

A policy's knobs go in a `knobs` object (`{"policy": "acre", "knobs": {"k_max": 4}}`), never beside the
other fields: `seed` is both a sampling field and the `random` policy's knob, and a misspelt field
must be an error, not a knob. Unknown fields are refused (except in chat completions, where the
OpenAI fields this server does not use are accepted and ignored).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .errors import bad_request, invalid_fields

MAX_NEW_TOKENS = 4096
MAX_STOP = 16
MAX_BATCH_QUESTIONS = 256
MAX_LIBRARY_DOCS = 4096  # documents one question may name in a list

# The document(s) a question is about: one reference (an id, a unique prefix of 4+ characters, or a name),
# "REF1,REF2,..." or "@COLLECTION" for a library, or a list of references (a library).
DocRef = str | list[str]


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("is empty")
    return v


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DocumentIn(Strict):
    text: str
    name: str = Field("", max_length=256)
    collection: str | None = Field(None, min_length=1, max_length=256)  # a library it belongs to (`@NAME`)

    _text = field_validator("text")(_not_blank)

    @field_validator("collection")
    @classmethod
    def _collection(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or "," in v):
            raise ValueError("give a non-empty name without commas")
        return v


class AskParams(Strict):
    """How one question is answered: everything but the document and the question."""

    answer_prefix: str = ""
    policy: str = "acre"
    knobs: dict[str, Any] = Field(default_factory=dict)
    max_new_tokens: int = Field(64, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(0.0, ge=0.0, le=100.0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOP)
    reselect: int = Field(0, ge=0, le=MAX_NEW_TOKENS, strict=True)  # re-selection every N answer tokens (chunk policies); 0: off

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: list[str]) -> list[str]:
        if any(not s for s in v):
            raise ValueError("stop strings must not be empty")
        return v

    @field_validator("policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        from acre_model.policies import policy_names

        if v not in policy_names():
            raise ValueError(f"unknown policy {v!r}; choose one of {', '.join(policy_names())}")
        return v

    @field_validator("knobs")
    @classmethod
    def _knobs(cls, v: dict, info: ValidationInfo) -> dict:
        from acre_model.errors import InputError
        from acre_model.policies import policy_class

        if "policy" in info.data:  # else the policy itself was refused
            try:
                policy_class(info.data["policy"]).from_knobs(**v)
            except InputError as e:
                raise ValueError(str(e)) from None
        return v

    @field_validator("reselect")
    @classmethod
    def _reselect(cls, v: int, info: ValidationInfo) -> int:
        from acre_model.engine import check_reselect_policy
        from acre_model.errors import InputError
        from acre_model.policies import policy_class

        if "policy" in info.data:  # else the policy itself was refused
            try:
                check_reselect_policy(v, policy_class(info.data["policy"]).from_knobs())
            except InputError as e:
                raise ValueError(str(e)) from None
        return v


def _doc_ref(v: DocRef) -> DocRef:
    if isinstance(v, str):
        if not v.strip():
            raise ValueError("must name a document")
        return v
    if not v or len(v) > MAX_LIBRARY_DOCS:
        raise ValueError(f"a list of documents needs 1 to {MAX_LIBRARY_DOCS} references")
    if any(not x.strip() for x in v):
        raise ValueError("every document reference must be a non-empty string")
    return v


class AskIn(AskParams):
    doc_id: DocRef
    question: str
    stream: bool = False

    _question = field_validator("question")(_not_blank)
    _doc = field_validator("doc_id")(_doc_ref)


class AskBatchIn(BaseModel):
    """`doc_id`, `questions` (strings, or objects with `question` and any AskParams field), and
    AskParams fields beside them as every question's defaults."""

    model_config = ConfigDict(extra="allow")
    doc_id: DocRef
    questions: list[str | dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH_QUESTIONS)

    def asks(self) -> list[AskIn]:
        """One AskIn per question; a ValidationError's location names `questions[i]` or the default."""
        defaults = dict(self.model_extra or {})
        for banned in ("question", "stream"):
            if banned in defaults:
                raise bad_request(banned, "not allowed beside `questions` (a batch does not stream)")
        try:
            AskIn.model_validate({**defaults, "doc_id": self.doc_id, "question": "?"})  # the defaults alone
        except ValidationError as e:
            raise invalid_fields(e.errors()) from None
        out = []
        for i, q in enumerate(self.questions):
            item = {"question": q} if isinstance(q, str) else q
            for banned in ("doc_id", "stream"):
                if banned in item:
                    raise bad_request(f"questions[{i}].{banned}", "belongs to the batch, not to one question")
            try:
                out.append(AskIn.model_validate({**defaults, **item, "doc_id": self.doc_id}))
            except ValidationError as e:
                raise invalid_fields(e.errors(), ("questions", i)) from None
        return out


# ---- OpenAI chat completions -----------------------------------------------------------------------


class AcreExt(Strict):
    """The `acre` extension field of a chat completion: which document, and how to answer."""

    doc_id: DocRef
    policy: str = "acre"
    answer_prefix: str = ""
    knobs: dict[str, Any] = Field(default_factory=dict)
    reselect: int = Field(0, ge=0, le=MAX_NEW_TOKENS, strict=True)

    _doc = field_validator("doc_id")(_doc_ref)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: str
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    acre: AcreExt
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None

    def question(self) -> str:
        """The last user message (earlier turns are not used: the document is the context)."""
        for m in reversed(self.messages):
            if m.role == "user":
                return m.text()
        raise bad_request("messages", "no user message (the last user message is the question)")

    def ask(self) -> AskIn:
        """The same request as an `/v1/ask` body."""
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        fields = {"doc_id": self.acre.doc_id, "question": self.question(), "policy": self.acre.policy,
                  "answer_prefix": self.acre.answer_prefix, "knobs": self.acre.knobs, "stop": stop,
                  "reselect": self.acre.reselect,
                  "max_new_tokens": self.max_completion_tokens or self.max_tokens, "temperature": self.temperature,
                  "top_p": self.top_p, "seed": self.seed}
        try:
            return AskIn.model_validate({k: v for k, v in fields.items() if v is not None})
        except ValidationError as e:
            # name the chat request's own fields: the question is the last user message
            where = {"question": ("messages",), "max_new_tokens": ("max_tokens",)}
            errs = [{**err, "loc": where.get(err["loc"][0], ("acre", *err["loc"]) if err["loc"][0] in
                                             AcreExt.model_fields else err["loc"])} for err in e.errors()]
            raise invalid_fields(errs) from None
