"""What every KV policy shares: its input (`PlanContext`) and the `Policy` base class.

A policy only decides *which* document entries the answer attends to (a `Plan`); the engine fetches,
assembles and runs them. Each policy is a small dataclass whose fields are its knobs: it validates
them in `__post_init__`, and `from_knobs` refuses a knob it does not take, naming the policy and the
knobs it has (the way kvpress presses own theirs).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

import torch

from ..doc_state import DocState
from ..errors import InputError
from ..library import Library, LibraryPlan
from ..pass1 import Pass1Runner
from ..plan import MODES, Plan


@dataclass
class PlanContext:
    """One question on one loaded document: what a policy plans from."""

    model: object  # the LlamaModel (pass 1 runs on it)
    doc: DocState
    q_ids: torch.Tensor  # [T] the question's token ids (separator, question, assistant header, prefix)
    pass1: Pass1Runner | None = None  # runs pass 1's forward (the scheduler's batches it); None: at once
    # pass 1's probes of this question, by the layers they recorded (`ChunkPolicy.index_probe`): a plan that
    # reads the locator index twice (`complete`) runs pass 1 once
    probes: dict = field(default_factory=dict)

    @property
    def cfg(self):
        return self.model.cfg


@dataclass
class Policy:
    """A KV policy: `plan()` picks what the answer attends to. Subclasses set `name` and add knobs."""

    name: ClassVar[str] = ""

    def plan(self, ctx: PlanContext) -> Plan:
        raise NotImplementedError

    def plan_library(self, model, library: Library, q_ids: torch.Tensor) -> LibraryPlan:
        """A plan over several documents. Over one document it is that document's plan; only the chunk
        policies rank the chunks of several documents together (`ChunkPolicy.plan_library`)."""
        if len(library.docs) > 1:
            raise InputError(f"policy {self.name!r} answers over one document only; a question over several "
                             "documents needs a chunk policy that ranks them with the locator index "
                             "(acre, fixed-k, random)")
        plan = self.plan(PlanContext(model, library.docs[0], q_ids))
        return LibraryPlan([library.docs[0].doc_id], [plan], plan.mode, plan.entropy, plan.k, plan.p)

    @classmethod
    def knob_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_knobs(cls, **knobs) -> "Policy":
        """The policy with these knobs (the rest at their defaults); an unknown knob is an InputError."""
        unknown = sorted(set(knobs) - set(cls.knob_names()))
        if unknown:
            have = ", ".join(cls.knob_names()) or "none"
            raise InputError(f"policy {cls.name!r} takes no knob {', '.join(unknown)} (its knobs: {have})")
        try:
            return cls(**knobs)
        except TypeError as e:  # a knob of the wrong type met a comparison in __post_init__
            raise InputError(f"policy {cls.name!r}: bad knob value ({e})") from None

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            raise InputError(f"policy {self.name!r}: {message}")

    def check_mode(self, mode: str) -> None:
        self.check(mode in MODES, f"mode must be one of {', '.join(MODES)}, got {mode!r}")
