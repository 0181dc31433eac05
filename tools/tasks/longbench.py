"""Real data from local JSONL files in the LongBench format, as `Task`s.

One JSON object per line with `context` (the document), `input` (the question) and `answers` (a list of
strings), optionally `length`, `dataset`, `_id` (https://github.com/THUDM/LongBench). InfiniteBench's
`answer` (string or list) and `id` are accepted as aliases. Nothing is downloaded.
"""
from __future__ import annotations

import json
from pathlib import Path

from acre_model.synth import Tokenize

from .task import Task

# LongBench's dataset2metric, mapped onto ours (classification, counting and retrieval answers are
# short strings, so RULER's containment match fits them; code similarity has no equivalent: ROUGE-L).
LONGBENCH_METRICS = {
    "narrativeqa": "f1", "qasper": "f1", "multifieldqa_en": "f1", "hotpotqa": "f1", "2wikimqa": "f1",
    "musique": "f1", "triviaqa": "f1",
    "gov_report": "rouge_l", "qmsum": "rouge_l", "multi_news": "rouge_l", "samsum": "rouge_l",
    "trec": "string_match", "passage_count": "string_match", "passage_retrieval_en": "string_match",
    "lcc": "rouge_l", "repobench-p": "rouge_l",
}

# LongBench's dataset2maxlen (answer budgets in tokens).
LONGBENCH_MAX_NEW_TOKENS = {
    "narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "hotpotqa": 32, "2wikimqa": 32,
    "musique": 32, "gov_report": 512, "qmsum": 512, "multi_news": 512, "trec": 64, "triviaqa": 32,
    "samsum": 128, "passage_count": 32, "passage_retrieval_en": 32, "lcc": 64, "repobench-p": 64,
}


def read_longbench_jsonl(path: str | Path, tokenize: Tokenize | None = None, family: str | None = None,
                         metric: str | None = None, limit: int | None = None) -> list[Task]:
    """Tasks from a LongBench-format JSONL file.

    `family` defaults to the record's `dataset`, else the file name without `.jsonl`; `metric` to
    `LONGBENCH_METRICS[family]`, else "f1"; the answer budget is LongBench's for the dataset, else 64. With `tokenize`, `n_tokens` is measured; otherwise it is the
    record's `length` (LongBench counts words there) or None. Raises ValueError naming the line of a
    malformed record.
    """
    path = Path(path)
    tasks: list[Task] = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            if limit is not None and len(tasks) >= limit:
                break
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{line_no}: not a JSON object")
            answers = rec.get("answers", rec.get("answer"))
            if isinstance(answers, str):
                answers = [answers]
            missing = [k for k, v in (("context", rec.get("context")), ("input", rec.get("input")),
                                      ("answers", answers)) if not v]
            if missing:
                raise ValueError(f"{path}:{line_no}: missing {', '.join(missing)}")
            fam = family or rec.get("dataset") or path.name.removesuffix(".jsonl")
            rid = rec.get("_id", rec.get("id", line_no))
            n = len(tokenize(rec["context"])) if tokenize else rec.get("length")
            tasks.append(Task(
                task_id=f"{fam}/{rid}", family=fam, doc_text=rec["context"], question=rec["input"],
                answer_prefix="", answers=[str(a) for a in answers], n_tokens_target=n, depth=None,
                metric=metric or LONGBENCH_METRICS.get(fam, "f1"), needle_spans=[], n_tokens=n,
                meta={"source": str(path), "line": line_no},
                max_new_tokens=LONGBENCH_MAX_NEW_TOKENS.get(fam, 64)))
    return tasks
