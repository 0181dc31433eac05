"""tools.tasks.read_longbench_jsonl on small files written here."""
from __future__ import annotations

import json

import pytest

from acre_model.synth import whitespace_tokenize
from tools.tasks import Task, read_longbench_jsonl


def _write(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_reads_longbench_records(tmp_path):
    f = _write(tmp_path / "hotpotqa.jsonl", [
        {"context": "Alice lives in Paris. Bob lives in Rome.", "input": "Where does Bob live?",
         "answers": ["Rome"], "length": 8, "dataset": "hotpotqa", "_id": "abc"},
        {"context": "Some report text.", "input": "Summarise.", "answers": ["A report."],
         "dataset": "gov_report"},
        "",
    ])
    tasks = read_longbench_jsonl(f)
    assert len(tasks) == 2 and all(isinstance(t, Task) for t in tasks)
    a, b = tasks
    assert (a.task_id, a.family, a.metric, a.n_tokens_target) == ("hotpotqa/abc", "hotpotqa", "f1", 8)
    assert (a.doc_text, a.question, a.answers, a.answer_prefix) == (
        "Alice lives in Paris. Bob lives in Rome.", "Where does Bob live?", ["Rome"], "")
    assert a.depth is None and a.needle_spans == [] and a.max_new_tokens == 32  # LongBench's hotpotqa
    assert (b.family, b.metric, b.task_id, b.n_tokens) == ("gov_report", "rouge_l", "gov_report/2", None)
    assert a.score("Bob lives in Rome") == pytest.approx(0.4)  # P 1/4, R 1


def test_family_from_file_name_aliases_and_tokenizer(tmp_path):
    f = _write(tmp_path / "my_set.jsonl", [
        {"context": "one two three four", "input": "q?", "answer": "four", "id": 7},
    ])
    (t,) = read_longbench_jsonl(f, tokenize=whitespace_tokenize)
    assert (t.family, t.task_id, t.answers, t.n_tokens, t.metric) == ("my_set", "my_set/7", ["four"], 4, "f1")
    (t,) = read_longbench_jsonl(f, family="x", metric="string_match", limit=1)
    assert (t.family, t.metric) == ("x", "string_match")


@pytest.mark.parametrize("line, msg", [
    ("{not json", "not JSON"),
    ('["a list"]', "not a JSON object"),
    ('{"context": "c", "input": "q"}', "missing answers"),
    ('{"context": "", "input": "q", "answers": ["a"]}', "missing context"),
])
def test_malformed_lines_are_named(tmp_path, line, msg):
    f = _write(tmp_path / "bad.jsonl", ['{"context": "c", "input": "q", "answers": ["a"]}', line])
    with pytest.raises(ValueError, match=rf"bad.jsonl:2: {msg}"):
        read_longbench_jsonl(f)
