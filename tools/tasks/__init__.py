"""The evaluation's task suite (issue 5): synthetic long-context families and a LongBench reader.

    from tools.tasks import build_suite, suite_size
    size = suite_size(quick=True)
    tasks = build_suite(tokenizer.encode, size.lengths, size.depths, size.n_per_cell, seed=0)
    score = tasks[0].score(prediction)

Documents come from `acre_model.synth` in its "eval" namespace, disjoint from the calibration probes.
"""
from .longbench import LONGBENCH_METRICS, read_longbench_jsonl
from .metrics import METRICS, score
from .suite import FAMILIES, FULL, QUICK, Family, SuiteSize, build_suite, suite_size
from .task import Task

__all__ = ["FAMILIES", "FULL", "LONGBENCH_METRICS", "METRICS", "QUICK", "Family", "SuiteSize", "Task",
           "build_suite", "read_longbench_jsonl", "score", "suite_size"]
