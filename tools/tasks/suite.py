"""The registry of task families and `build_suite`, which lays them out on a length x depth grid."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from acre_model.synth import Tokenize

from . import aggregation, fact_qa, niah, variable_tracking
from .task import Task


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[..., Task]  # build(tokenize, n_tokens, depth, seed, task_id="") -> Task
    uses_depth: bool            # False: one place does not hold the answer; built once per length
    metric: str
    group: str                  # column of the report: "niah" | "multi-hop" | "aggregation" | "qa"
    max_new_tokens: int         # answer budget; the default model puts list answers after a newline


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("niah_single_noise", niah.niah_single_noise, True, "string_match", "niah", 16),
    Family("niah_single_prose", niah.niah_single_prose, True, "string_match", "niah", 16),
    Family("niah_multikey", niah.niah_multikey, True, "string_match", "niah", 16),
    Family("niah_multivalue", niah.niah_multivalue, True, "string_match", "niah", 64),
    Family("niah_multiquery", niah.niah_multiquery, True, "string_match", "niah", 64),
    Family("vt", variable_tracking.variable_tracking, False, "string_match", "multi-hop", 48),
    Family("cwe", aggregation.common_words, False, "recall", "aggregation", 96),
    Family("fwe", aggregation.frequent_words, False, "recall", "aggregation", 48),
    Family("qa_local", fact_qa.qa_local, True, "f1", "qa", 24),
    Family("qa_global", fact_qa.qa_global, False, "recall", "qa", 64),
)}


@dataclass(frozen=True)
class SuiteSize:
    """How big a suite is: document lengths (tokens), needle depths, and tasks per (length, depth) cell."""

    lengths: tuple[int, ...]
    depths: tuple[float, ...]
    n_per_cell: int

    def __post_init__(self):
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError("lengths must be positive")
        if not self.depths or not all(0.0 <= d <= 1.0 for d in self.depths):
            raise ValueError("depths must lie in [0, 1]")
        if self.n_per_cell < 1:
            raise ValueError("n_per_cell must be at least 1")


# --quick: minutes on a 2-core CPU (18 needle-family + 8 depth-free tasks x families);
# full: the 1k-8k x 0-100% grid of the issue.
QUICK = SuiteSize(lengths=(1024, 2048), depths=(0.1, 0.5, 0.9), n_per_cell=1)
FULL = SuiteSize(lengths=(1024, 2048, 4096, 8192), depths=(0.0, 0.25, 0.5, 0.75, 1.0), n_per_cell=2)


def suite_size(quick: bool) -> SuiteSize:
    return QUICK if quick else FULL


def _depth_label(d: float | None) -> str:
    return "-" if d is None else f"d{d:.2f}"


def build_suite(tokenize: Tokenize, lengths: Sequence[int] = QUICK.lengths,
                depths: Sequence[float] = QUICK.depths, n_per_cell: int = QUICK.n_per_cell,
                seed: int = 0, families: Sequence[str] | None = None,
                n_per_length: int | None = None) -> list[Task]:
    """All tasks of `families` (default: all of `FAMILIES`, in registry order).

    Depth families get `n_per_cell` tasks per (length, depth); depth-free ones `n_per_length` tasks per
    length (default `n_per_cell`). Task `i` of a family uses the same seed at every length and depth
    (same keys, values, haystack; only the placement moves), so the grid is controlled. Task ids are
    `"{family}/{length}/{d0.50|-}/{i}"`.
    """
    names = list(FAMILIES) if families is None else list(families)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown task families {unknown}; expected some of {list(FAMILIES)}")
    SuiteSize(tuple(lengths), tuple(depths), n_per_cell)  # validates
    per_length = n_per_cell if n_per_length is None else n_per_length
    tasks: list[Task] = []
    for name in names:
        fam = FAMILIES[name]
        for length in lengths:
            cells = [(d, i) for d in depths for i in range(n_per_cell)] if fam.uses_depth \
                else [(None, i) for i in range(per_length)]
            for depth, i in cells:
                tid = f"{name}/{length}/{_depth_label(depth)}/{i}"
                task = fam.build(tokenize, length, depth, f"{seed}:{i}", task_id=tid)
                task.max_new_tokens = fam.max_new_tokens
                tasks.append(task)
    return tasks
