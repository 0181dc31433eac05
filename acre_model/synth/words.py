"""Word lists, and the English the prose grammar needs: plurals, third persons, gerunds, articles.

The prose words (`NOUNS` ... `ADVERBIAL_ENDINGS`, the haystack) and the words of keys, values and facts
(`KEY_ADJECTIVES` ... `FRUITS`) are disjoint (tested), so a planted key or value occurs in a document
only where it was planted. `pseudo_word` makes up more words for tasks that need more than these lists.
"""
from __future__ import annotations

import random

# ----------------------------------------------------------------------------------------------------
# Prose words: what the grammar of `prose.py` draws from.

NOUNS = """idea problem city river garden machine teacher student builder painter writer engineer
farmer market village library museum bridge road window harbour forest mountain valley island question
answer habit method tool system project company investor customer founder program language theory
experiment pattern story book letter journey season winter summer morning evening kitchen workshop
factory school office neighbour friend stranger traveller musician song melody instrument painting
shadow signal network engine clock lamp map compass boat ship train station street square tower wall
door field orchard meadow seed tree flower leaf root stone rock wave cloud storm argument decision
mistake lesson skill craft design plan draft sketch rule exception detail principle process result
surprise reason purpose mind memory conversation audience reader critic editor gardener carpenter
baker sailor scientist historian architect merchant apprentice student council committee newspaper
essay chapter sentence notebook catalogue archive inventory recipe ritual festival journeyman""".split()

MASS = """patience time money attention curiosity courage practice taste judgement luck experience
discipline work energy knowledge advice evidence progress history silence weather music freedom
ambition honesty trust routine craftsmanship""".split()

VERBS = """build improve notice ignore explain study change measure design protect follow question
imagine discover describe choose test solve repair collect share remember forget underestimate
overestimate admire trust doubt value plan organize prefer avoid create finish start visit explore
learn teach watch support reward copy borrow invent simplify rebuild examine praise criticize
misunderstand recognize arrange abandon defend discuss""".split()

ADJECTIVES = """careful simple quiet strange useful difficult obvious subtle patient honest curious
ordinary remarkable modest ambitious practical abstract familiar unfamiliar small large old young
early late slow quick bright dark narrow wide gentle rough clever clumsy serious playful reliable
fragile durable expensive cheap rare common hidden visible distant nearby local foreign ancient modern
rigid flexible generous stubborn thoughtful restless peculiar sturdy crowded empty""".split()

ADVERBS = """usually often rarely sometimes seldom quietly slowly gradually eventually carefully
always never quickly patiently deliberately""".split()

CONNECTORS = ("However", "Of course", "In practice", "Even so", "For a while", "In the end",
              "As a rule", "At first", "Sooner or later", "On the other hand", "In my experience",
              "Strangely enough", "For most of history", "Nowadays", "Still", "Meanwhile",
              "To be fair", "Looking back")

ADVERBIAL_ENDINGS = ("on purpose", "for long", "by accident", "without help", "at first",
                     "in a hurry", "for its own sake", "in the same way twice", "all at once")

# ----------------------------------------------------------------------------------------------------
# Words of keys, values and facts.

# Evaluation keys (RULER style, "adjective-noun").
KEY_ADJECTIVES = """cooperative abundant whimsical luminous sluggish jubilant brittle murky zealous
tranquil boisterous meek grumpy lavish nimble opulent placid quirky rustic serene tacky vivid wary
zesty feisty giddy hollow jagged lanky mellow nifty plump ragged shaggy spiky tawny woozy bumpy
chunky dapper fluffy gaudy hefty itchy jolly knotty lumpy mushy""".split()
KEY_NOUNS = """elephant walrus pelican badger otter lobster flamingo porcupine hedgehog armadillo
tortoise gazelle raccoon platypus jackal salamander mongoose ostrich pigeon walnut pumpkin turnip
cabbage saucepan kettle teapot umbrella trombone banjo accordion zeppelin canoe scooter wheelbarrow
bucket ladle spatula thimble doorknob lampshade pancake muffin pretzel noodle""".split()

# Calibration-probe keys: a different vocabulary again.
PROBE_CODE_NAMES = """Juniper Saffron Marigold Hawthorn Cypress Lavender Thistle Magnolia Bramble
Nettle Sorrel Willow Aspen Hazel Rowan Clover Heather Fennel Tansy Yarrow Sequoia Alder Linden
Myrtle""".split()
PROBE_CITIES = """Varnholm Questa Lindqvar Ossory Pellworth Tamsin Brackwater Edelmoor Corvale
Harrowgate Mirefield Dunmarrow Kestrelby Ashcombe Wendmere Stillhaven""".split()
PROBE_CONTAINERS = ("red toolbox", "blue teapot", "green boot", "yellow tin", "old violin case",
                    "brown envelope", "silver jar", "wooden crate")

# Names for facts (demo, QA documents).
FIRST_NAMES = """Marguerite Tobias Ingrid Lorenzo Beatrix Casimir Delphine Emeric Fenella Gideon
Henrietta Ignatius Josephine Leopold Millicent Octavia Percival Rosalind Sebastian Theodora Ulrich
Wilhelmina Ambrose Clementine Desmond Evangeline Florian Griselda Horatio Isadora""".split()
LAST_NAMES = """Olsen Whitcombe Delacroix Ferreira Lindgren Okonkwo Castellano Brannigan Quill
Ashworth Mbeki Halloran Vasquez Thornbury Kowalski Nakamura Pemberton Ravenscroft Sorensen Tremaine
Abernathy Hargreaves Montague Penhaligon""".split()
TOWNS = """Port Elling|Marrowby|Caldmoor|Wexham Cross|Lower Tansley|Brindle Hythe|Orford Keys|
Saltmarsh Green|Greywater|Ambleside Quay|Fallowmere|Kingsferry|Hollin Vale|Redcastle|Northwick|
Eastmere|Silverdale|Thornbridge|Wyndham Reach|Copperfield""".replace("\n", "").split("|")
PASSWORD_WORDS = """lantern quartz meridian harbinger tapestry sapphire driftwood cobalt
mandolin periscope falconry obsidian parsnip velvet windmill gondola""".split()
COLOURS = ("crimson", "azure", "emerald", "amber", "violet", "ivory", "scarlet", "indigo")
FRUITS = ("apricot", "pomegranate", "quince", "mango", "gooseberry", "persimmon", "fig", "kumquat")


# ----------------------------------------------------------------------------------------------------
# Inflection: a regular rule and a table of the exceptions among the words above.

_PLURAL_EXCEPTIONS = {"leaf": "leaves", "journeyman": "journeymen"}
_GERUND_EXCEPTIONS = {"forget": "forgetting", "plan": "planning"}
# NOTE: the exceptions match a whole word only: `article("useful")` is "a" but `article("useful idea")`
# is "an" (its first letter), so the prose can say "an useful idea" or "a honest friend". Correcting
# that would change the evaluation documents.
_ARTICLE_EXCEPTIONS = {"useful": "a", "unique": "a", "usual": "a", "honest": "an", "hour": "an"}


def _add_s(word: str) -> str:
    """The regular -s of plural nouns and third-person verbs: "maps", "watches", "copies", "days"."""
    if word.endswith(("s", "sh", "ch", "x", "z")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def plural(noun: str) -> str:
    return _PLURAL_EXCEPTIONS.get(noun) or _add_s(noun)


def third_person(verb: str) -> str:
    return _add_s(verb)


def gerund(verb: str) -> str:
    if verb in _GERUND_EXCEPTIONS:
        return _GERUND_EXCEPTIONS[verb]
    if verb.endswith("e") and not verb.endswith(("ee", "ye", "oe")):
        return verb[:-1] + "ing"
    return verb + "ing"


def article(word: str) -> str:
    """The indefinite article, "a" or "an", for `word` (a word or a phrase)."""
    return _ARTICLE_EXCEPTIONS.get(word) or ("an" if word[0] in "aeiou" else "a")


def english_words() -> list[str]:
    """The base English words of these lists (nouns, verbs, adjectives, key words), sorted."""
    return sorted(set(NOUNS) | set(MASS) | set(VERBS) | set(ADJECTIVES) | set(KEY_ADJECTIVES)
                  | set(KEY_NOUNS) | set(PASSWORD_WORDS) | set(FRUITS))


def prose_vocabulary() -> set[str]:
    """Every word the prose grammar can emit (lower case), for tests of key/haystack disjointness."""
    words: set[str] = set()
    for n in NOUNS:
        words |= {n, plural(n)}
    for v in VERBS:
        words |= {v, third_person(v), gerund(v)}
    words |= set(MASS) | set(ADJECTIVES) | set(ADVERBS)
    for phrase in (*CONNECTORS, *ADVERBIAL_ENDINGS):
        words |= set(phrase.lower().split())
    return words


# ----------------------------------------------------------------------------------------------------
# Made-up words.

_ONSETS = ("b", "br", "d", "dr", "f", "g", "gl", "k", "l", "m", "n", "p", "pr", "r", "s", "st", "t",
           "tr", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "n", "l", "r", "s", "m", "k")


def pseudo_word(rng: random.Random) -> str:
    """A pronounceable made-up word of 2-3 syllables ("bralimor")."""
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                   for _ in range(rng.randint(2, 3)))
