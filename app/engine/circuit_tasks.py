"""Built-in circuit-discovery tasks: positive and negative prompts for induction (random tokens, repeated or not)
and, from templates for GPT-2-style tokenizers, indirect object identification (Wang et al. 2022), greater-than
(Hanna et al. 2023) and docstring argument completion (Heimersheim & Janiak 2023); knows nothing of SAEs, HTTP or
how the model was loaded.

Each text task gives prompts that stop where the behaviour shows (the next token is the answer) and, as negatives,
the papers' own corrupted forms: IOI's ABC prompts (a third name where the repeated subject was, so there is no
indirect object to find), greater-than's "01" start years (every two-digit end is as good as any), and docstrings
whose def line names other arguments than the docstring does ("random_def"). On a tokenizer other than GPT-2's the
names and numbers may split into several tokens: the prompts still run, the behaviour may simply not be there.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from transformer_lens import HookedTransformer

TEXT_TASKS = ("ioi", "greater_than", "docstring")
TASKS = ("induction", *TEXT_TASKS)

# --- IOI (Wang et al. 2022): names, places, objects and templates of their dataset -------------------------------

NAMES = ("Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Kate", "Lisa", "Paul", "Mark", "Anne",
         "Sarah", "David", "Michael", "Rose", "Alex", "Laura", "Max", "Jane", "Ben", "Eric", "Emma")
PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station")
OBJECTS = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack", "book", "apple")
IOI_TEMPLATES = (
    "Then, {B} and {A} went to the {PLACE}. {C} gave a {OBJECT} to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {C} decided to give it to",
    "After {A} and {B} went to the {PLACE}, {C} gave a {OBJECT} to",
    "While {A} and {B} were working at the {PLACE}, {C} gave a {OBJECT} to",
    "Friends {A} and {B} found a {OBJECT} at the {PLACE}. {C} gave it to",
    "When {B} and {A} went to the {PLACE}, {C} gave the {OBJECT} to",
)

# --- greater-than (Hanna et al. 2023): "The <noun> lasted from the year XXYY to the year XX" ------------------------

GT_NOUNS = ("war", "expedition", "project", "dynasty", "conflict", "reign", "pilgrimage", "voyage", "campaign",
            "siege", "occupation", "construction", "drought", "famine", "strike", "revolution")
GT_CENTURIES = ("11", "12", "13", "14", "15", "16", "17", "18")

# --- docstring (Heimersheim & Janiak 2023) -------------------------------------------------------------------------

IDENTIFIERS = ("file", "name", "data", "value", "key", "path", "size", "mode", "user", "token", "item", "result",
               "text", "count", "index", "line", "node", "state", "shape", "type", "source", "target", "content",
               "context", "parent", "config", "model", "field", "group", "label", "url", "port")
FUNCTIONS = ("load", "check", "update", "process", "run", "get", "set", "build", "parse", "send")
WORDS = ("oil", "column", "piece", "crime", "population", "unit", "dark", "line", "new", "first", "old", "road",
         "song", "rate", "case", "team", "cost", "part", "side", "time")


def ioi_texts(n: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """Positives: the subject B named again (ABB: the answer is A, the indirect object); negatives: a third name
    C there instead (ABC), same template, place and object."""
    positive, negative = [], []
    for k in range(n):
        a, b, c = rng.sample(NAMES, 3)
        fill = {"A": a, "B": b, "PLACE": rng.choice(PLACES), "OBJECT": rng.choice(OBJECTS)}
        template = IOI_TEMPLATES[k % len(IOI_TEMPLATES)]
        positive.append(template.format(**fill, C=b))
        negative.append(template.format(**fill, C=c))
    return positive, negative


def greater_than_texts(n: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """Positives: a start year XXYY with YY in 02..98 (the answer: a YY' > YY); negatives: the same with YY = 01."""
    positive, negative = [], []
    for _ in range(n):
        noun, century, yy = rng.choice(GT_NOUNS), rng.choice(GT_CENTURIES), rng.randint(2, 98)
        prompt = "The {} lasted from the year {}{:02d} to the year {}"
        positive.append(prompt.format(noun, century, yy, century))
        negative.append(prompt.format(noun, century, 1, century))
    return positive, negative


def docstring_texts(n: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """Positives: a def with three arguments and a docstring (their form: a three-word summary, two words per
    parameter) that has documented the first two (the answer: the third's name); negatives: the same docstring
    under a def that names three other arguments."""
    positive, negative = [], []
    for _ in range(n):
        names = rng.sample(IDENTIFIERS, 6)
        args, other = names[:3], names[3:]
        summary, *words = (" ".join(rng.sample(WORDS, k)) for k in (3, 2, 2))
        body = (f'    """{summary}\n\n    :param {args[0]}: {words[0]}\n'
                f"    :param {args[1]}: {words[1]}\n    :param")
        fn = rng.choice(FUNCTIONS)
        positive.append(f"def {fn}(self, {', '.join(args)}):\n{body}")
        negative.append(f"def {fn}(self, {', '.join(other)}):\n{body}")
    return positive, negative


TEXTS: dict[str, Callable[[int, random.Random], tuple[list[str], list[str]]]] = {
    "ioi": ioi_texts, "greater_than": greater_than_texts, "docstring": docstring_texts}


def task_texts(task: str, n_prompts: int = 16, seed: int = 0) -> tuple[list[str], list[str]]:
    """A text task's positive and negative prompts, n_prompts each, the same for the same seed."""
    if task not in TEXTS:
        raise ValueError(f"text tasks are {TEXT_TASKS}, not {task!r}")
    return TEXTS[task](n_prompts, random.Random(seed))


def induction_task(model: HookedTransformer, bos: int, n_prompts: int = 16, seq_len: int = 20,
                   seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The built-in induction task: positives are BOS and seq_len random tokens twice over, negatives BOS and
    2·seq_len random tokens (no repeat); tokens never BOS, from a fixed generator."""
    g = torch.Generator().manual_seed(seed)
    device = model.W_E.device

    def rand(n: int) -> torch.Tensor:
        r = torch.randint(0, model.cfg.d_vocab - 1, (n,), generator=g)
        return r + (r >= bos).long()  # skip over BOS

    bos_t = torch.tensor([bos])
    positive, negative = [], []
    for _ in range(n_prompts):
        r = rand(seq_len)
        positive.append(torch.cat([bos_t, r, r])[None].to(device))
        negative.append(torch.cat([bos_t, rand(2 * seq_len)])[None].to(device))
    return positive, negative


def task_prompts(task: str, model: HookedTransformer, bos: int, encode: Callable[[str], torch.Tensor],
                 n_prompts: int = 16, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A built-in task's prompts as token ids (1, T) each; `encode` tokenises a text as the engine does (BOS)."""
    if task == "induction":
        return induction_task(model, bos, n_prompts, seed=seed)
    positive, negative = task_texts(task, n_prompts, seed)
    return [encode(t) for t in positive], [encode(t) for t in negative]
