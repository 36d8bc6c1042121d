"""De-duplication of SFT examples: exact duplicates, then near-duplicate answers, per task_type.

``deduplicate(examples)`` returns the examples that survive, in their input order, and a ``DedupStats`` with
how many were removed from each task_type by each step. Duplicates are only ever looked for within one
task_type: the same conversation under two task types is kept twice.

Step 1, exact duplicates (``exact=False`` turns it off):
    Two examples are exact duplicates when they have the same task_type and the same messages: the same
    number of turns, each with the same role and the same content once surrounding whitespace is stripped
    from the content. The first occurrence in input order is kept and every later one is removed. Tags and
    source are not compared.

Step 2, near-duplicate answers (``near_threshold``, default 0.9; ``None`` turns this step off):
    Runs on what step 1 kept. An example's answer is all its assistant turns joined with a newline, then
    normalised: lowercased, punctuation and other symbols deleted (``"Don't!"`` becomes ``"dont"``),
    whitespace collapsed. The answer's shingles are its word n-grams (n = ``shingle``, default 3); an answer
    shorter than n words is one shingle, the whole normalised answer. Two examples of one task_type are
    near-duplicates when the Jaccard similarity of their shingle sets (shared shingles / all distinct
    shingles) is at least ``near_threshold``. Examples are taken in input order, and each is compared with
    the examples of its task_type already kept by this step: it is removed if it is a near-duplicate of any of
    them. So the first of a group of similar answers is kept, and an example is never removed because it
    resembles one that was itself removed.

    Only answers of at least ``min_answer_words`` normalised words (default 8) take part in this step, as
    example and as reference. Short answers, such as the labels of a classification task ("positive",
    "negative") or a bare number, are the same across many distinct examples: comparing them would wipe
    out such a task. Exact-duplicate removal (step 1) still applies to them.

    Comparing every pair would take quadratic time, so candidates are found with MinHash and LSH: each
    answer gets a signature of 64 MinHash values (64 independent 31-bit hashes of each shingle, taken from
    SHAKE-128, keeping the smallest of each), the signature is cut into bands of r values, and two answers
    are candidates when they agree on all values of at least one band. r is chosen from the threshold so that
    a pair whose similarity is exactly the threshold is missed with probability below one in a million (more
    similar pairs even less); this holds for thresholds from about 0.2 up, below which the miss chance grows
    towards (1 - threshold)**64. Each candidate is confirmed with the exact Jaccard similarity before anything
    is removed, so LSH can miss a near-duplicate with that tiny probability but never removes an example that
    is below the threshold.

Protected examples:
    Examples whose tags contain ``PROTECTED_TAG`` ("robustness": noisy or oddly formatted prompts with good
    answers, kept on purpose) are skipped by both steps: they are never removed, and they are not used as
    the reference that a later example is compared with either. An untagged copy of a protected example is
    therefore kept, unless it duplicates another untagged example.

The result is deterministic: hashes come from hashlib, never from Python's per-process ``hash()``, so the
same input gives the same output in every process, whatever PYTHONHASHSEED is.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from sweep_sft.data.records import Example
from sweep_sft.errors import ConfigError

PROTECTED_TAG = "robustness"

NUM_PERM = 64  # MinHash values per signature
MAX_MISS = 1e-6  # chance that LSH misses a pair whose Jaccard similarity equals the threshold
_HASH_BYTES = 4  # each MinHash value fills 4 bytes of the signature
_VALUE_BITS = 31  # ... and is a 31-bit hash, leaving the field's top bit as a guard for _signature
_DIGEST = NUM_PERM * _HASH_BYTES
_FIELD_ONES = (1 << _VALUE_BITS) - 1
_LOW = sum(_FIELD_ONES << (8 * _HASH_BYTES * i) for i in range(NUM_PERM))
_GUARD = sum(1 << (8 * _HASH_BYTES * i + _VALUE_BITS) for i in range(NUM_PERM))
_SHINGLE_CACHE = 4096  # shingle sets of kept examples held for candidate checks

_NOT_WORD = re.compile(r"[^\w\s]|_")


@dataclass
class DedupStats:
    """Examples removed per task_type: ``exact`` by step 1, ``near`` by step 2."""

    exact: dict[str, int] = field(default_factory=dict)
    near: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, dict[str, int]]:
        """{task_type: {"exact": n, "near": m}} for every task_type seen, zeros included, sorted by task_type."""
        return {
            t: {"exact": self.exact.get(t, 0), "near": self.near.get(t, 0)} for t in sorted({*self.exact, *self.near})
        }


def deduplicate(
    examples: list[Example],
    near_threshold: float | None = 0.9,
    shingle: int = 3,
    min_answer_words: int = 8,
    exact: bool = True,
) -> tuple[list[Example], DedupStats]:
    """Remove exact duplicates, then near-duplicate answers; see the module docstring for the exact rules."""
    _check_args(near_threshold, shingle, min_answer_words)
    examples = list(examples)
    stats = DedupStats()
    for ex in examples:
        stats.exact.setdefault(ex.task_type, 0)
        stats.near.setdefault(ex.task_type, 0)

    kept = _drop_exact(examples, stats) if exact else examples
    if near_threshold is not None:
        kept = _drop_near(kept, stats, near_threshold, shingle, min_answer_words)
    return kept, stats


def _check_args(near_threshold: float | None, shingle: int, min_answer_words: int) -> None:
    if near_threshold is not None:
        if (
            isinstance(near_threshold, bool)
            or not isinstance(near_threshold, (int, float))
            or not 0 < near_threshold <= 1  # also rejects NaN
        ):
            raise ConfigError(
                f"data.dedup.near_threshold: expected a number in (0, 1] or null to disable, got {near_threshold!r}"
            )
    if isinstance(shingle, bool) or not isinstance(shingle, int) or shingle < 1:
        raise ConfigError(f"data.dedup.shingle: expected a positive integer (words per shingle), got {shingle!r}")
    if isinstance(min_answer_words, bool) or not isinstance(min_answer_words, int) or min_answer_words < 0:
        raise ConfigError(f"data.dedup.min_answer_words: expected an integer >= 0, got {min_answer_words!r}")


def _is_protected(ex: Example) -> bool:
    return PROTECTED_TAG in ex.tags


def _drop_exact(examples: Iterable[Example], stats: DedupStats) -> list[Example]:
    seen: set[bytes] = set()
    kept = []
    for ex in examples:
        if _is_protected(ex):
            kept.append(ex)
            continue
        key = _exact_key(ex)
        if key in seen:
            stats.exact[ex.task_type] += 1
        else:
            seen.add(key)
            kept.append(ex)
    return kept


def _exact_key(ex: Example) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    # Length-prefixed fields, so no choice of content can make two different conversations collide.
    # A turn's weight is part of it: the same conversation trained on other turns is no copy.
    turns = (s for m in ex.messages for s in (m["role"], m["content"].strip(), str(m.get("weight", 1))))
    for part in (ex.task_type, *turns):
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.digest()


def normalise(text: str) -> list[str]:
    """Words of text, lowercased, with punctuation and symbols deleted."""
    return _NOT_WORD.sub("", text.lower()).split()


def answer_text(ex: Example) -> str:
    """All assistant turns joined with a newline."""
    return "\n".join(m["content"] for m in ex.messages if m["role"] == "assistant")


def shingles(words: list[str], n: int) -> set[str]:
    """Word n-grams of words; the whole text as one shingle when it has fewer than n words."""
    if len(words) < n:
        return {" ".join(words)}
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    """Jaccard similarity of two shingle sets (1 for two empty sets)."""
    if not a and not b:
        return 1.0
    common = len(a & b)
    return common / (len(a) + len(b) - common)


def lsh_rows(threshold: float, num_perm: int = NUM_PERM, max_miss: float = MAX_MISS) -> int:
    """Rows per LSH band: the most (fewest false candidates) that still miss a pair at threshold < max_miss.

    A pair of similarity s agrees on one MinHash value with probability s, on a band of r values with s**r,
    and becomes a candidate unless all b = num_perm // r bands differ: missed with probability (1 - s**r)**b.
    """
    best = 1
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if (1 - threshold**rows) ** bands < max_miss:
            best = rows
    return best


def _signature(shingle_set: set[str]) -> bytes:
    """NUM_PERM MinHash values, little-endian 4 bytes each: per position, the smallest of the shingles' hashes.

    Each shingle's NUM_PERM hashes are 31-bit values, one per 32-bit field of a big integer; the fields'
    top bits stay clear so the per-field minimum of two such integers can be taken with a few whole-integer
    operations (SIMD within a register) instead of NUM_PERM Python-level comparisons.
    """
    running = -1
    for s in shingle_set:
        hashes = int.from_bytes(hashlib.shake_128(s.encode("utf-8", "surrogatepass")).digest(_DIGEST), "little") & _LOW
        if running < 0:
            running = hashes
            continue
        # Per field, (2**31 + running) - hashes keeps its top bit exactly when running >= hashes; no borrow
        # crosses into the next field, since both values are below 2**31.
        take = ((((running | _GUARD) - hashes) & _GUARD) >> _VALUE_BITS) * _FIELD_ONES
        running ^= (running ^ hashes) & take
    return running.to_bytes(_DIGEST, "little")


class _NearIndex:
    """LSH buckets of the answers kept so far in one task_type, with exact Jaccard confirmation."""

    def __init__(self, threshold: float, n: int) -> None:
        self.threshold = threshold
        self.n = n
        rows = lsh_rows(threshold)
        self.band_bytes = rows * _HASH_BYTES
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(NUM_PERM // rows)]
        self.texts: list[str] = []  # answers of indexed examples; shingles are recomputed on demand
        self.cache: dict[int, set[str]] = {}

    def _shingles_of(self, idx: int) -> set[str]:
        got = self.cache.get(idx)
        if got is None:
            if len(self.cache) >= _SHINGLE_CACHE:
                self.cache.pop(next(iter(self.cache)))  # oldest first: dicts keep insertion order
            got = self.cache[idx] = shingles(normalise(self.texts[idx]), self.n)
        return got

    def add_unless_near(self, text: str, shingle_set: set[str]) -> bool:
        """Index text and return True, or return False if an indexed answer is a near-duplicate of it."""
        sig = _signature(shingle_set)
        keys = [sig[i * self.band_bytes : (i + 1) * self.band_bytes] for i in range(len(self.buckets))]
        candidates: set[int] = set()
        for band, key in zip(self.buckets, keys, strict=True):
            hit = band.get(key)
            if hit:
                candidates.update(hit)
        for idx in sorted(candidates):
            if jaccard(shingle_set, self._shingles_of(idx)) >= self.threshold:
                return False
        idx = len(self.texts)
        self.texts.append(text)
        for band, key in zip(self.buckets, keys, strict=True):
            band.setdefault(key, []).append(idx)
        return True


def _drop_near(
    examples: list[Example], stats: DedupStats, threshold: float, n: int, min_answer_words: int
) -> list[Example]:
    indexes: dict[str, _NearIndex] = {}
    kept = []
    for ex in examples:
        if _is_protected(ex):
            kept.append(ex)
            continue
        text = answer_text(ex)
        words = normalise(text)
        if len(words) < min_answer_words:
            kept.append(ex)
            continue
        index = indexes.get(ex.task_type)
        if index is None:
            index = indexes[ex.task_type] = _NearIndex(threshold, n)
        if index.add_unless_near(text, shingles(words, n)):
            kept.append(ex)
        else:
            stats.near[ex.task_type] += 1
    return kept
