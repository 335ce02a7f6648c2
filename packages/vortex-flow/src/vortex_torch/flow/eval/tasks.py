"""Synthetic long-context tasks, generated locally and deterministically (no dataset download).

Each task hides one or more facts ("needles") in a haystack of filler sentences and ends the prompt with the
start of the answer, so a base model and an instruct model can both complete it without a chat template.
The five tasks follow RULER (Hsieh et al., 2024) and the passkey test of Mohtashami & Jaggi (2023):

* ``passkey``: a 5-digit pass key in filler text;
* ``niah_single``: one "special magic number" for a key word;
* ``niah_multikey``: four key/number pairs, the question asks for one key;
* ``niah_multivalue``: four numbers for the same key, all four must be returned;
* ``vt`` (variable tracking): ``VAR A = 12345``, then a chain ``VAR B = VAR A`` ...; name every variable.

A sample is scored by exact substring match of each expected answer in the greedy output (the fraction found,
so a multi-answer task gives partial credit as in RULER's ``string_match_all``).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: ``text -> number of tokens`` (a tokenizer, or an estimate when none is available)
TokenCounter = Callable[[str], int]

# RULER's "noise" haystack: repetitive, so nothing in it can be mistaken for a needle.
FILLER = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)

KEY_WORDS = (
    "amber anchor apple arrow badge basil beacon bishop blossom bridge canyon carbon cedar cobalt comet "
    "copper coral crystal dagger delta ember falcon fern garnet glacier granite harbor hazel indigo ivory "
    "jasper juniper kettle lantern lemon marble meadow mercury nickel onyx orchid pebble pepper quartz "
    "raven saffron silver spruce thistle timber topaz tulip velvet walnut willow zephyr"
).split()

INTRO = (
    "There is important information hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.\n\n"
)


class ContextTooShortError(ValueError):
    """The requested context cannot hold a task's needles and question."""


@dataclass(frozen=True)
class Sample:
    """One generated prompt: ``answers`` are the strings the greedy output must contain."""

    task: str
    context: int
    index: int
    prompt: str
    answers: tuple[str, ...]
    max_new_tokens: int

    def score(self, output: str) -> float:
        """Fraction of :attr:`answers` that occur verbatim in ``output``."""
        return sum(a in output for a in self.answers) / len(self.answers)


@dataclass(frozen=True)
class _Spec:
    """What a task puts in the haystack and asks: ``needles`` (inserted at random depths), the ``question``
    appended after the haystack, and the expected ``answers``."""

    needles: list[str]
    question: str
    answers: tuple[str, ...]


def _number(rng: random.Random, digits: int) -> str:
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


def _passkey(rng: random.Random) -> _Spec:
    key = _number(rng, 5)
    return _Spec(
        [f"The pass key is {key}. Remember it. {key} is the pass key."],
        "What is the pass key? The pass key is",
        (key,),
    )


def _magic(key: str, value: str) -> str:
    return f"One of the special magic numbers for {key} is: {value}."


def _ask_magic(key: str, plural: bool = False) -> str:
    what = "all the special magic numbers" if plural else "the special magic number"
    return (
        f"What is {what} for {key} mentioned in the provided text? The special magic "
        f"number{'s' if plural else ''} for {key} mentioned in the provided text {'are' if plural else 'is'}"
    )


def _niah_single(rng: random.Random) -> _Spec:
    key, value = rng.choice(KEY_WORDS), _number(rng, 7)
    return _Spec([_magic(key, value)], _ask_magic(key), (value,))


def _niah_multikey(rng: random.Random) -> _Spec:
    keys = rng.sample(KEY_WORDS, 4)
    values = [_number(rng, 7) for _ in keys]
    target = rng.randrange(len(keys))
    return _Spec(
        [_magic(k, v) for k, v in zip(keys, values, strict=True)], _ask_magic(keys[target]), (values[target],)
    )


def _niah_multivalue(rng: random.Random) -> _Spec:
    key = rng.choice(KEY_WORDS)
    values: list[str] = []
    while len(values) < 4:  # distinct values: a repeated one would be scored twice for one mention
        v = _number(rng, 7)
        if v not in values:
            values.append(v)
    return _Spec([_magic(key, v) for v in values], _ask_magic(key, plural=True), tuple(values))


def _variable_tracking(rng: random.Random) -> _Spec:
    names = [w.upper() for w in rng.sample(KEY_WORDS, 5)]
    value = _number(rng, 5)
    chain = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in itertools.pairwise(names)]
    question = (
        f"Question: Find all variables that are assigned the value {value} in the text above. Answer: According "
        f"to the chain of variable assignments in the text above, {len(names)} variables are assigned the value "
        f"{value}, they are:"
    )
    return _Spec(chain, question, tuple(names))


#: task name -> (generator of a spec, greedy tokens to generate)
TASKS: dict[str, tuple[Callable[[random.Random], _Spec], int]] = {
    "passkey": (_passkey, 12),
    "niah_single": (_niah_single, 16),
    "niah_multikey": (_niah_multikey, 16),
    "niah_multivalue": (_niah_multivalue, 48),
    "vt": (_variable_tracking, 32),
}


def _assemble(spec: _Spec, n_filler: int, depths: Sequence[float]) -> str:
    """Haystack of ``n_filler`` filler sentences with ``spec.needles[i]`` inserted at fraction ``depths[i]``.

    Needles keep their order (a variable chain must read top to bottom), so depths are sorted.
    """
    sentences = [FILLER[i % len(FILLER)] for i in range(n_filler)]
    # deepest first, so the insertion points of the earlier needles still index the plain filler
    for needle, depth in reversed(list(zip(spec.needles, sorted(depths), strict=True))):
        sentences.insert(round(depth * n_filler), needle)
    return INTRO + " ".join(sentences) + "\n\n" + spec.question


def make_sample(task: str, context: int, index: int, seed: int, count_tokens: TokenCounter) -> Sample:
    """Sample ``index`` of ``task`` whose prompt plus answer tokens fit in ``context`` tokens.

    The needles, their depths and the answers depend only on ``(seed, task, context, index)``; the filler
    length is the largest that fits ``context - max_new_tokens`` tokens under ``count_tokens``.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    gen, max_new = TASKS[task]
    # a str seed is hashed with SHA-512 by random.Random: stable across processes and PYTHONHASHSEED
    rng = random.Random(f"{seed}/{task}/{context}/{index}")
    spec = gen(rng)
    depths = [rng.random() for _ in spec.needles]
    limit = context - max_new
    if count_tokens(_assemble(spec, 0, depths)) > limit:
        raise ContextTooShortError(
            f"context {context} is too short for task {task!r}: its question and needles alone need more than "
            f"{limit} tokens (context - {max_new} answer tokens) with this tokenizer; use a longer context"
        )
    lo, hi = 0, 1
    while count_tokens(_assemble(spec, hi, depths)) <= limit:  # exponential search, then bisection
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count_tokens(_assemble(spec, mid, depths)) <= limit:
            lo = mid
        else:
            hi = mid
    return Sample(task, context, index, _assemble(spec, lo, depths), spec.answers, max_new)


def make_samples(
    tasks: Sequence[str], context: int, num_samples: int, seed: int, count_tokens: TokenCounter
) -> list[Sample]:
    """``num_samples`` samples of every task in ``tasks`` at one context length."""
    return [make_sample(t, context, i, seed, count_tokens) for t in tasks for i in range(num_samples)]


def estimate_tokens(text: str) -> int:
    """Token count estimate for English text without a tokenizer (BPE vocabularies average ~4 characters per
    token on this filler); used to size prompts for a server when no ``--tokenizer`` is given."""
    return -(-len(text) // 4)
