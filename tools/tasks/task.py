"""`Task`: one document, one question, the expected answers and how to score them.

Every family generator and the LongBench reader return this one dataclass, so the runner treats
synthetic and real data alike. It round-trips through JSON (`to_dict` / `from_dict`) for resumable runs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .metrics import METRICS, cut_at_stop, score


@dataclass
class Task:
    task_id: str                 # unique in a suite, e.g. "niah_single_prose/4096/d0.50/0"
    family: str                  # e.g. "niah_multikey", "qa_global", or a LongBench dataset name
    doc_text: str                # the document (ingested once; question-independent)
    question: str
    answer_prefix: str           # starts the assistant turn ("" for none)
    answers: list[str]           # reference strings; how they count depends on `metric`
    n_tokens_target: int | None  # requested document length (None for real data without a length)
    depth: float | None          # requested depth of the relevant fact in [0, 1]; None if not one place
    metric: str                  # "string_match" | "f1" | "rouge_l" | "recall"
    # Char spans [start, end) in doc_text of the facts the answer needs (all of them), for chunk
    # recall; empty when the answer depends on the whole document (cwe, fwe, real data).
    needle_spans: list[tuple[int, int]] = field(default_factory=list)
    n_tokens: int | None = None  # measured document length with the suite's tokenizer
    meta: dict = field(default_factory=dict)
    max_new_tokens: int = 32     # enough for a complete answer (lists need more than one number)
    # The prediction is cut at the first of these that follows some text, before scoring (a runner may
    # also stop generating there). Empty: score the whole prediction.
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"{self.task_id}: unknown metric {self.metric!r}; expected one of {METRICS}")
        if not self.answers:
            raise ValueError(f"{self.task_id}: no reference answers")
        if self.depth is not None and not 0.0 <= self.depth <= 1.0:
            raise ValueError(f"{self.task_id}: depth {self.depth} outside [0, 1]")
        self.needle_spans = [tuple(s) for s in self.needle_spans]
        self.stop = tuple(self.stop)
        for a, b in self.needle_spans:
            if not 0 <= a < b <= len(self.doc_text):
                raise ValueError(f"{self.task_id}: needle span {(a, b)} outside the document")

    def score(self, prediction: str) -> float:
        """This task's metric on `prediction` (the generated text after `answer_prefix`, without it)."""
        return score(self.metric, cut_at_stop(prediction or "", self.stop), self.answers)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Task":
        return cls(**d)
