"""QA over generated fact documents: a register of people scattered through prose.

Each record is two short sentences planted together, "{person} is a {profession}. {person} lives in
{town}.", in the prose haystack; about one record per 200 tokens. Each sentence holds one attribute,
so the answer prefix ("{person} is", "{person} lives in") is followed by the answer alone, and the
task's stop strings cut what the model adds after it before F1 is computed. Two question kinds show the distinction the method is
built on:
- `qa_local` (precise detail): one record, placed at `depth`, asked about (profession or town);
  scored with token F1;
- `qa_global` (overview): "which people live in {town}?", whose answer is 2-5 records spread over the
  whole document (`depth` is None); scored with recall of the names.
"""
from __future__ import annotations

from acre_model.synth import Tokenize, article, plant_sentences, random_person, seeded_rng

from .task import Task

PROFESSIONS = ("marine biologist", "watchmaker", "bookbinder", "glassblower", "locksmith",
               "cartographer", "beekeeper", "violin maker", "ferry captain", "stonemason",
               "translator", "pharmacist", "lighthouse keeper", "piano tuner", "botanist",
               "saddler", "astronomer", "cheesemaker", "rope maker", "surveyor")
FACT_TOWNS = ("Aldermoor", "Brisk Harbour", "Colmsford", "Dunholt", "Elverby", "Fenwick Lea",
              "Garrowfield", "Hythe Minor")
TOKENS_PER_RECORD = 200
QA_STOP = ("\n", ". ")  # a local answer is one phrase: score the first sentence only


def _record(person: str, profession: str, town: str) -> str:
    return f"{person} is {article(profession)} {profession}. {person} lives in {town}."


def _register(rng, n_tokens: int, n_target_town: int | None = None):
    """People with professions and towns; the first town in the returned order is the target town."""
    n = max(6, n_tokens // TOKENS_PER_RECORD)
    towns = rng.sample(FACT_TOWNS, 6)
    people: list[str] = []
    for _ in range(n):
        people.append(random_person(rng, people))
    if n_target_town is None:
        n_target_town = min(5, max(2, n // 8))
    homes = [towns[0]] * n_target_town + [rng.choice(towns[1:]) for _ in range(n - n_target_town)]
    rng.shuffle(homes)
    return [(p, rng.choice(PROFESSIONS), t) for p, t in zip(people, homes)], towns[0]


def qa_local(tokenize: Tokenize, n_tokens: int, depth: float, seed: str, task_id: str = "") -> Task:
    rng = seeded_rng("eval", seed, "qa_local")
    records, _ = _register(rng, n_tokens)
    person, profession, town = records[0]
    plants = [(depth, _record(*records[0]))] + [(rng.random(), _record(*r)) for r in records[1:]]
    p = plant_sentences(tokenize, n_tokens, plants, rng, "prose")
    if rng.random() < 0.5:
        q, prefix, ans, asked = (f"What does {person} do for a living?", f"{person} is", profession,
                                 "profession")
    else:
        q, prefix, ans, asked = f"In which town does {person} live?", f"{person} lives in", town, "town"
    return Task(task_id, "qa_local", p.text, q, prefix, [ans], n_tokens, depth, "f1", [p.spans[0]],
                p.n_tokens, {"person": person, "asked": asked, "n_records": len(records),
                             "actual_depth": p.token_depths[0]}, stop=QA_STOP)


def qa_global(tokenize: Tokenize, n_tokens: int, depth: float | None, seed: str,
              task_id: str = "") -> Task:
    rng = seeded_rng("eval", seed, "qa_global")
    records, town = _register(rng, n_tokens)
    plants = sorted(((rng.random(), _record(*r)) for r in records), key=lambda x: x[0])
    p = plant_sentences(tokenize, n_tokens, plants, rng, "prose")
    by_sentence = {_record(*r): r for r in records}
    names, spans = [], []
    for (_, sentence), span in zip(plants, p.spans):
        person, _, home = by_sentence[sentence]
        if home == town:
            names.append(person)
            spans.append(span)
    return Task(task_id, "qa_global", p.text,
                f"Which of the people mentioned in the text live in {town}? Name all of them.",
                f"The people who live in {town} are", names, n_tokens, None, "recall", spans,
                p.n_tokens, {"town": town, "n_records": len(records)})
