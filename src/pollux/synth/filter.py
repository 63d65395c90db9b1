"""The synth filter stage's text logic: non-Russian share, exact and near duplicates.

The POLLUX recipe dropped generated instructions with more than 5% non-Russian tokens and
duplicates (78k → 26k). This module makes those decisions for a list of instruction rows; the
pipeline stage (`pollux.synth`) stores what it returns.

**What counts as non-Russian.** Tokens come from `razdel`. Only *word* tokens count, in numerator
and denominator alike: code (fenced blocks, inline backticks, lines that look like code), LaTeX
math, URLs, e-mails, numbers, punctuation and identifiers (`snake_case`, `camelCase`, `file.py`,
`GPT-4o`, all-caps acronyms such as `API`, one-letter variables) are neither Russian nor foreign.

- Cyrillic words are grouped into segments (split at sentence ends, colons, quotes, brackets and
  line breaks) and each segment gets one language: single words are ambiguous between Cyrillic
  languages, segments are not. A segment is non-Russian when its words carry letters Russian does
  not have (і ї є ґ ў ә ң ђ џ ѓ …), or when `lingua` (bundled models, Cyrillic languages only)
  clearly prefers another language — "clearly", because a short Russian sentence can score a
  little higher as Bulgarian, and Russian is what a Russian benchmark expects.
- Latin-script words inside a Russian text are usually names and terms ("Python", "API",
  "Visual Studio Code", "list comprehension"): a Russian reader calls such an instruction Russian.
  They count as foreign only when they form a *phrase*: a run of Latin words (not broken by
  punctuation or Cyrillic) of 2+ words containing a function word ("the", "is", "und", "de", …),
  of 3+ words with a lowercase word, or of 5+ words — unless the run is a Title Case name of up to
  6 words ("Ruby on Rails", "The Lord of the Rings"). A text with no Cyrillic word at all is
  entirely foreign. Words of other scripts (Greek, CJK, Arabic, …) are foreign.

**Duplicates.** Texts are normalised (NFKC, casefold, ё → е, punctuation and whitespace folded);
equal normal forms are exact duplicates. Near duplicates are found by MinHash LSH (`datasketch`,
seeded permutations) over word shingles of the text's *content* words (Russian function words left
out), and every LSH candidate is confirmed with the exact Jaccard similarity of the shingle sets,
so the decision does not depend on MinHash noise. Rows are processed in key order; the first one
is kept. The default shingle is one word (`shingle_size=1`: a set of content words), because
instructions are short (10–30 words) and paraphrases move words around: on
`tests/data/synth/filter_near_duplicates.json` at the default threshold 0.7, content-word sets
catch all 15 paraphrases (Jaccard ≥ 0.78) and keep all 25 pairs of distinct asks of one leaf
apart (≤ 0.67), while word 3-grams catch 6 of 15 (the rest at 0.20–0.67). Known limit: two asks
that differ in one word of a short template ("…что такое закон Архимеда" / "…закон Ома", 0.75) are
merged — no word-level measure tells that from a synonym swap.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pollux.executor import Row
from pollux.records import text_problem

if TYPE_CHECKING:
    from lingua import LanguageDetector

REASONS = ("non_russian", "exact_duplicate", "near_duplicate")

# Imported where used (the `synth` extra), so that `pollux` itself runs without them.
_DEPENDENCIES = ("razdel", "lingua", "datasketch")


def missing_dependencies() -> list[str]:
    """The filter's libraries that are not installed (checked before a long run starts)."""
    import importlib.util

    return [name for name in _DEPENDENCIES if importlib.util.find_spec(name) is None]


@dataclass(frozen=True)
class FilterSettings:
    max_foreign_share: float = 0.05   # drop when the share of non-Russian word tokens exceeds this
    near_dup_threshold: float = 0.7   # MinHash-LSH Jaccard threshold on normalised word shingles
    num_perm: int = 128
    shingle_size: int = 1             # words per shingle (content words, see `shingles`); 1 = a set of words

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_foreign_share <= 1.0:
            raise ValueError(f"max_foreign_share must be in [0, 1], got {self.max_foreign_share}")
        if not 0.0 < self.near_dup_threshold <= 1.0:
            raise ValueError(f"near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}")
        if self.num_perm < 16:
            raise ValueError(f"num_perm must be at least 16, got {self.num_perm}")
        if self.shingle_size < 1:
            raise ValueError(f"shingle_size must be at least 1, got {self.shingle_size}")


# ---------------------------------------------------------------------------------------------
# Language share

# Spans that are code or machine text, removed before tokenising (replaced by a space).
_FENCE = re.compile(r"(```|~~~)([^\n]*)\n?(.*?)(?:\1|\Z)", re.S)
_MASKS = [
    re.compile(r"`[^`\n]+`"),                                 # inline code
    # LaTeX math; a formula is at most 2,000 characters, so that many unclosed "\(" cost linear time
    re.compile(r"\$\$.{1,2000}?\$\$|\$[^$\n]+\$|\\\(.{1,2000}?\\\)|\\\[.{1,2000}?\\\]", re.S),
    re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.\S+", re.I),   # URLs
    # e-mails and dotted names (file.py, os.path.join); the look-behinds let a match start only at a
    # word's start, so a long word without "@" or "." is scanned once, not once per character
    re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
    re.compile(r"(?<![\w-])[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)+"),
]
# A line (in a text that has Cyrillic) without Cyrillic that looks like code: a keyword and a
# code character, braces or semicolons, a call `name(`, `->`, `::`, an assignment at the line's
# start, or indentation. Prose lines rarely have any of these.
_CODE_LINE = re.compile(
    r"^\s*(?:def|class|import|from|return|for|while|if|elif|else|try|except|with|print|echo|"
    r"SELECT|INSERT|UPDATE|DELETE|CREATE|#include|function|const|let|var|public|static|int|void)\b.*[(){}:;=]"
    r"|[{}]|;\s*$|\w\(|->|::|^\s*[\w.\[\]]+\s*[-+*/]?=\s*\S|^(?: {2,}|\t)\S"
)
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")
_RUSSIAN_LETTERS = set("абвгдеёжзийклмнопрстуфхцчшщъыьэюя")
_SEGMENT_BREAK = set(".!?;:«»\"“”„()[]{}…")
_LATIN_RUN_BREAK = _SEGMENT_BREAK | set(",—–")
_MAX_TITLE_WORDS = 6
# Function words that turn a run of Latin words into a phrase (en, de, fr, es, it).
_FUNCTION_WORDS = frozenset({
    # en
    "a", "an", "the", "of", "to", "in", "on", "at", "for", "from", "with", "by", "and", "or", "but",
    "not", "no", "is", "are", "was", "were", "be", "been", "am", "do", "does", "did", "have", "has",
    "had", "will", "would", "can", "could", "should", "may", "might", "must", "this", "that",
    "these", "those", "it", "its", "i", "you", "he", "she", "we", "they", "my", "your", "our",
    "their", "me", "him", "her", "us", "them", "what", "which", "who", "how", "why", "when",
    "where", "if", "so", "as", "than", "then", "there", "here", "all", "any", "some", "please",
    "let",
    # de
    "der", "die", "das", "ein", "eine", "und", "oder", "nicht", "ist", "sind", "zu", "mit", "von",
    "für", "auf", "ich", "du", "wir", "sie",
    # fr
    "le", "la", "les", "un", "une", "des", "et", "ou", "est", "sont", "je", "tu", "nous", "vous",
    "il", "elle", "pour", "avec", "dans", "sur",
    # es
    "el", "los", "las", "y", "es", "son", "yo", "para", "con", "por", "una", "del", "al", "que",
    # it
    "lo", "gli", "di", "che", "non", "sono", "per",
})
# Cyrillic-script languages a segment may be in; lingua chooses among these only. Latin-script
# words need no language id: whichever language they are in, they are not Russian (see module doc).
_CYRILLIC_LANGUAGES = ("RUSSIAN", "UKRAINIAN", "BELARUSIAN", "BULGARIAN", "SERBIAN", "MACEDONIAN",
                       "KAZAKH", "MONGOLIAN")
# Prior odds for Russian: lingua's best other language must be this many times as likely as Russian
# before Cyrillic words without non-Russian letters are called foreign. Instructions were asked for
# in Russian, and a short Russian sentence can score a little higher as Bulgarian or Macedonian.
_RUSSIAN_PRIOR_ODDS = 3.0
_MIN_LINGUA_WORDS = 3
_CONTEXT_WORDS = 200
# ъ is a separator before е, ё, ю, я in Russian; elsewhere (съвет, път) it is Bulgarian.
_NON_RUSSIAN_HARD_SIGN = re.compile(r"ъ(?![еёюя])", re.I)


@lru_cache(maxsize=1)
def _detector() -> LanguageDetector:
    """The lingua detector, built once per process on first use (its models load lazily)."""
    from lingua import Language, LanguageDetectorBuilder

    languages = [getattr(Language, name) for name in _CYRILLIC_LANGUAGES]
    return LanguageDetectorBuilder.from_languages(*languages).build()


@dataclass
class _Analysis:
    """A text's word counts: what is decided already, and the Cyrillic segments lingua must judge."""

    foreign: int = 0                                                  # Latin phrases, other scripts
    segments: list[list[str]] = field(default_factory=list)          # Cyrillic words per segment

    @property
    def cyrillic(self) -> str:
        return " ".join(word for segment in self.segments for word in segment)


def _fence(match: re.Match[str]) -> str:
    """A fenced block's replacement: a space for code; the text itself for prose in a fence
    (generators fence passages to translate or summarise, and those are words like any other)."""
    info, body = match.group(2).strip().lower(), match.group(3)
    is_prose = info in ("", "text", "txt", "plain", "plaintext", "markdown", "md") and not any(
        _CODE_LINE.search(line) for line in body.split("\n"))
    return f"\n{body}\n" if is_prose else " "


def _mask(text: str) -> str:
    """`text` without code, math, URLs and e-mails (each replaced by a space)."""
    text = _FENCE.sub(_fence, text)
    for pattern in _MASKS:
        text = pattern.sub(" ", text)
    if not _CYRILLIC.search(text):
        return text          # no Russian at all: nothing to protect, an English "x = 1" is English
    lines = [" " if not _CYRILLIC.search(line) and _CODE_LINE.search(line) else line
             for line in text.split("\n")]
    return "\n".join(lines)


def _word_kind(token: str) -> str | None:
    """'cyr', 'lat', 'other' for a word token; None for anything that is not a natural-language word."""
    if not any(ch.isalpha() for ch in token):
        return None                                         # numbers, punctuation
    if any(ch.isdigit() or ch == "_" for ch in token):
        return None                                         # identifiers: GPT-4, snake_case, mp3
    if _CYRILLIC.search(token):
        return "cyr"
    if sum(ch.isalpha() for ch in token) == 1:
        return None                                         # variables and initials: x, α, C
    if _LATIN.search(token):
        if token.isupper() or re.search(r"[a-z][A-Z]", token):
            return None                                     # acronyms (API, XIX), camelCase
        return "lat"
    return "other"


def _is_title(words: Sequence[str]) -> bool:
    """Title Case ("Ruby on Rails", "The Lord of the Rings"): a name, though it has function words."""
    return words[0][0].isupper() and all(w[0].isupper() or w.casefold() in _FUNCTION_WORDS for w in words)


def _is_phrase(words: Sequence[str]) -> bool:
    """A run of Latin words that is language rather than a name or term (see module doc)."""
    if len(words) <= _MAX_TITLE_WORDS and _is_title(words):
        return False
    if len(words) >= 5:
        return True
    if len(words) >= 2 and any(w.casefold() in _FUNCTION_WORDS for w in words):
        return True
    return len(words) >= 3 and any(w[0].islower() for w in words)


def _analyse(text: str) -> _Analysis:
    """Sort `text`'s word tokens into Cyrillic segments, Latin runs and other-script words."""
    from razdel import tokenize  # the `synth` extra: imported where used, so `pollux` runs without it

    masked = _mask(unicodedata.normalize("NFC", text))       # composed letters: й, ё, ї as one character
    result = _Analysis()
    segment: list[str] = []
    run: list[str] = []
    runs: list[list[str]] = []

    def close_segment() -> None:
        if segment:
            result.segments.append(segment.copy())
            segment.clear()

    def close_run() -> None:
        if run:
            runs.append(run.copy())
            run.clear()

    prev_stop = 0
    for token in tokenize(masked):
        if "\n" in masked[prev_stop:token.start]:
            close_segment()
            close_run()
        prev_stop = token.stop
        kind = _word_kind(token.text)
        if kind is None:
            if token.text in _SEGMENT_BREAK:
                close_segment()
            if token.text in _LATIN_RUN_BREAK:
                close_run()
        elif kind == "cyr":
            segment.append(token.text)
            close_run()
        elif kind == "lat":
            run.append(token.text)
        else:
            result.foreign += 1
            close_run()
    close_segment()
    close_run()
    # With no Cyrillic at all the text is not Russian, names or not.
    phrases = [r for r in runs if _is_phrase(r)] if result.segments else runs
    result.foreign += sum(len(r) for r in phrases)
    return result


def _non_russian_letters(words: Sequence[str]) -> bool:
    """Whether enough of `words` are spelled in a way Russian is not (і, ї, ў, ә, ђ, ј, a Bulgarian ъ…):
    two such words, or one in four — a lone Ukrainian place name does not make a sentence Ukrainian."""
    odd = sum(1 for w in words if _NON_RUSSIAN_HARD_SIGN.search(w)
              or any(_CYRILLIC.match(ch) and ch.lower() not in _RUSSIAN_LETTERS for ch in w))
    return odd >= 2 or (odd > 0 and odd * 4 >= len(words))


def _verdict(words: Sequence[str], scores: dict[str, dict[str, float]]) -> int:
    """+1 clearly foreign, -1 clearly Russian, 0 undecided (see `_RUSSIAN_PRIOR_ODDS`).

    Fewer than `_MIN_LINGUA_WORDS` words are judged by their letters only: lingua cannot tell one
    or two Cyrillic words of Russian from Bulgarian or Serbian. `scores` holds lingua's
    confidences for every word sequence `_queries` asked about.
    """
    if _non_russian_letters(words):
        return 1
    if len(words) < _MIN_LINGUA_WORDS:
        return 0
    confidences = scores[" ".join(words)]
    russian = confidences.get("RUSSIAN", 0.0)
    other = max((v for k, v in confidences.items() if k != "RUSSIAN"), default=0.0)
    if other >= _RUSSIAN_PRIOR_ODDS * russian:
        return 1
    return -1 if russian >= _RUSSIAN_PRIOR_ODDS * other else 0


def _context(analysis: _Analysis) -> list[str]:
    """The words that stand for a text's whole Cyrillic part: its first `_CONTEXT_WORDS` (enough to
    tell the language; lingua's time grows with the length)."""
    return analysis.cyrillic.split()[:_CONTEXT_WORDS]


def _queries(analysis: _Analysis) -> list[str]:
    """What lingua must score for a text: its whole Cyrillic part and, if it has several, each
    segment — only those that letters and length leave undecided."""
    parts = [_context(analysis)] if analysis.segments else []
    if len(analysis.segments) > 1:
        parts += analysis.segments
    return [" ".join(words) for words in parts
            if len(words) >= _MIN_LINGUA_WORDS and not _non_russian_letters(words)]


def foreign_shares(texts: Sequence[str]) -> list[float]:
    """`foreign_share` of each text; lingua runs once over all distinct word sequences, on all cores.

    Each Cyrillic segment is judged on its own and in the context of the text's whole Cyrillic part:
    it is foreign when it clearly is, or when the text as a whole clearly is and the segment is not
    clearly Russian. Short segments ("Напиши:") thus take their text's language, while a Ukrainian
    quote inside a Russian instruction still counts as foreign.
    """
    analyses = [_analyse(text) for text in texts]
    queries = sorted({query for analysis in analyses for query in _queries(analysis)})
    values = _detector().compute_language_confidence_values_in_parallel(queries) if queries else []
    scores = {query: {c.language.name: c.value for c in row} for query, row in zip(queries, values, strict=True)}
    shares: list[float] = []
    for analysis in analyses:
        russian, foreign = 0, analysis.foreign
        if analysis.segments:
            whole = _verdict(_context(analysis), scores)
            for segment in analysis.segments:
                own = whole if len(analysis.segments) == 1 else _verdict(segment, scores)
                if own == 1 or (whole == 1 and own != -1):
                    foreign += len(segment)
                else:
                    russian += len(segment)
        total = russian + foreign
        shares.append(foreign / total if total else 0.0)
    return shares


def foreign_share(text: str) -> float:
    """Share of non-Russian word tokens in `text`, in [0, 1] (0 for a text without words).

    See the module doc for what counts as a word and as non-Russian.
    """
    return foreign_shares([text])[0]


# ---------------------------------------------------------------------------------------------
# Duplicates

_NON_WORD = re.compile(r"[\W_]+")
# Russian function words: left out of near-duplicate shingles, because paraphrases differ mostly in
# them ("а затем" / "затем", "так, чтобы" / "чтобы") while distinct asks differ in content words.
_RUSSIAN_FUNCTION_WORDS = frozenset({
    "а", "без", "бы", "был", "была", "были", "было", "быть", "в", "вам", "вас", "ведь", "во", "вот",
    "все", "всего", "всех", "вы", "где", "да", "даже", "для", "до", "его", "ее", "ей", "ему", "если",
    "есть", "еще", "же", "за", "зачем", "и", "из", "или", "им", "их", "к", "как", "какая", "какие",
    "какой", "когда", "кто", "ли", "либо", "между", "мне", "мы", "на", "над", "надо", "не", "него",
    "нее", "нет", "ни", "них", "но", "ну", "нужно", "о", "об", "он", "она", "они", "оно", "от", "по",
    "под", "после", "при", "про", "с", "сам", "себя", "со", "так", "также", "там", "то", "тоже",
    "только", "ты", "у", "уже", "чем", "через", "что", "чтобы", "это", "этот", "эта", "эти", "этого",
    "этой", "этом", "эту", "я", "который", "которая", "которое", "которые", "которого", "которой",
    "котором", "которую", "затем", "потом", "тогда", "сама", "само", "свой", "своей", "свою", "своих",
})


def normalise(text: str) -> str:
    """The form two texts must share to be exact duplicates: NFKC, casefold, ё → е, and every run
    of punctuation, symbols and whitespace folded to one space."""
    folded = unicodedata.normalize("NFKC", text).casefold().replace("ё", "е")
    return _NON_WORD.sub(" ", folded).strip()


def shingles(normal: str, size: int) -> set[str]:
    """Word `size`-grams of a normalised text's content words (function words left out; all words
    when a text has nothing else). Size 1, the default, is the text's set of content words — see
    the module doc for why order is left out."""
    words = [w for w in normal.split() if w not in _RUSSIAN_FUNCTION_WORDS] or normal.split()
    if len(words) <= size:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + size]) for i in range(len(words) - size + 1)}


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class _NearIndex:
    """Kept texts' shingle sets behind a MinHash LSH index; `match_or_add` finds the closest one."""

    def __init__(self, settings: FilterSettings):
        from datasketch import MinHash, MinHashLSH

        self._minhash = MinHash
        self._settings = settings
        # LSH only proposes candidates (exact Jaccard decides), so it looks a little below the
        # threshold: a pair just above it is then proposed with high probability, not a coin toss.
        candidate_threshold = min(0.9, max(0.1, settings.near_dup_threshold - 0.1))
        self._lsh = MinHashLSH(threshold=candidate_threshold, num_perm=settings.num_perm)
        self._sets: dict[str, set[str]] = {}

    def _signature(self, items: set[str]) -> Any:
        signature = self._minhash(num_perm=self._settings.num_perm, seed=1)
        signature.update_batch([s.encode("utf-8") for s in sorted(items)])
        return signature

    def match_or_add(self, key: str, items: set[str]) -> tuple[str, float] | None:
        """The (key, Jaccard) of the most similar kept text at or above the threshold, else add."""
        if not items:
            return None
        signature = self._signature(items)
        best: tuple[str, float] | None = None
        for other in sorted(self._lsh.query(signature)):
            similarity = _jaccard(items, self._sets[other])
            if similarity >= self._settings.near_dup_threshold and (best is None or similarity > best[1]):
                best = (other, similarity)
        if best is None:
            self._lsh.insert(key, signature)
            self._sets[key] = items
        return best


# ---------------------------------------------------------------------------------------------
# The stage


def _checked(rows: Iterable[Row]) -> list[Row]:
    """Rows sorted by key, each checked for the fields the filter reads; errors name the row."""
    rows = list(rows)
    seen: set[str] = set()
    for i, row in enumerate(rows):
        where = f"row {i}" + (f" (key {row.get('key')!r})" if isinstance(row, dict) else "")
        if not isinstance(row, dict):
            raise ValueError(f"filter: {where} is a {type(row).__name__}, not a mapping")
        missing = [f for f in ("key", "instruction", "task_leaf") if f not in row]
        if missing:
            raise ValueError(f"filter: {where} lacks field(s) {', '.join(missing)}")
        if not isinstance(row["key"], str) or not isinstance(row["instruction"], str):
            raise ValueError(f"filter: {where}: 'key' and 'instruction' must be strings")
        problem = text_problem(row["instruction"])
        if problem is not None:
            raise ValueError(f"filter: {where}: field 'instruction': {problem}")
        if row["key"] in seen:
            raise ValueError(f"filter: {where}: key {row['key']!r} occurs twice")
        seen.add(row["key"])
    return sorted(rows, key=lambda r: r["key"])


def filter_instructions(rows: list[Row], settings: FilterSettings) -> tuple[list[Row], list[Row]]:
    """rows carry at least "key", "instruction", "task_leaf" (any order in, processed in sorted-by-key order so the
    result is deterministic). Returns (kept rows, rejected rows); each reject = the row + "reason" in
    {"non_russian", "exact_duplicate", "near_duplicate"} + "detail" (e.g. the share, or the key it duplicates).

    The language decision is the row's own; duplicates are looked for among the rows that passed
    it, across task leaves (the same instruction under two leaves is still one training
    instruction). `detail` is the share (rounded to 4 places) for "non_russian", the kept row's key
    for the duplicates.
    """
    ordered = _checked(rows)
    shares = foreign_shares([row["instruction"] for row in ordered])
    kept: list[Row] = []
    rejected: list[Row] = []
    exact: dict[str, str] = {}
    near = _NearIndex(settings)
    for row, share in zip(ordered, shares, strict=True):
        if share > settings.max_foreign_share:
            rejected.append({**row, "reason": "non_russian", "detail": round(share, 4)})
            continue
        normal = normalise(row["instruction"])
        if normal in exact:
            rejected.append({**row, "reason": "exact_duplicate", "detail": exact[normal]})
            continue
        match = near.match_or_add(row["key"], shingles(normal, settings.shingle_size))
        # A later exact copy of this text duplicates the row that is kept: this one, or its original.
        exact[normal] = row["key"] if match is None else match[0]
        if match is not None:
            rejected.append({**row, "reason": "near_duplicate", "detail": match[0]})
            continue
        kept.append(dict(row))
    return kept, rejected
