"""Tokenizing captions and mapping words to ids and back.

The tokenizer needs no downloads: it lower-cases, normalises Unicode to NFC, splits on
whitespace and then splits every punctuation or symbol character into its own token.
Letters, digits and combining marks of any script make up words, so "Café" -> ["café"] and
Hindi or Cyrillic words stay whole; an apostrophe between letters stays inside the word
("don't"). Scripts written without spaces (Chinese, Japanese) are not segmented further.

    >>> tokenize("A red circle, on the LEFT.")
    ['a', 'red', 'circle', ',', 'on', 'the', 'left', '.']
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from captioner.errors import CaptionerError, require_positive
from captioner.files import write_text_atomic
from captioner.limits import MAX_VOCAB_SIZE, require_at_most, short

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
# The defaults of `data.min_word_count` and `data.max_caption_len` (the data module's and
# `captioner data check`'s): words seen fewer times become <unk>; longer captions are cut.
MIN_WORD_COUNT = 1
MAX_CAPTION_LEN = 20
SPECIALS = (PAD, START, END, UNK)
_APOSTROPHES = "'\u2019"


def _is_word_char(ch: str) -> bool:
    # Letters, numbers and combining marks (Devanagari vowel signs, decomposed accents) form words.
    return ch == "_" or unicodedata.category(ch)[0] in "LNM"


def _split_chunk(chunk: str) -> list[str]:
    """Split one whitespace-free chunk into words and single punctuation characters."""
    tokens: list[str] = []
    word = ""
    for i, ch in enumerate(chunk):
        if _is_word_char(ch):
            word += ch
        elif ch in _APOSTROPHES and word and i + 1 < len(chunk) and _is_word_char(chunk[i + 1]):
            word += "'"
        else:
            if word:
                tokens.append(word)
                word = ""
            tokens.append(ch)
    if word:
        tokens.append(word)
    return tokens


def tokenize(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens of `text` (deterministic, no downloads)."""
    tokens: list[str] = []
    for chunk in unicodedata.normalize("NFC", text).lower().split():
        # Fast path: most chunks are plain words; only the rest need the per-character walk.
        if chunk.isalnum():
            tokens.append(chunk)
        else:
            tokens.extend(_split_chunk(chunk))
    return tokens


def has_words(text: str) -> bool:
    """True when `text` holds at least one word (not only punctuation or whitespace)."""
    return any(_is_word_char(ch) for ch in text)


class Vocabulary:
    """Index <-> word mapping with the special tokens `<pad> <start> <end> <unk>` at ids 0..3."""

    pad_id, start_id, end_id, unk_id = 0, 1, 2, 3

    def __init__(self, words: Sequence[str]):
        words = list(words)
        require_at_most(MAX_VOCAB_SIZE, vocabulary_size=len(words))
        strange = next((word for word in words if not isinstance(word, str)), None)
        if strange is not None:
            kind = type(strange).__name__
            raise CaptionerError(f"a vocabulary holds words (strings), not {kind}s like {short(strange)}")
        if tuple(words[:4]) != SPECIALS:
            raise CaptionerError(
                f"a vocabulary must start with the special tokens {list(SPECIALS)}, got {short(words[:4])}; "
                "rebuild it with Vocabulary.build"
            )
        if len(set(words)) != len(words):
            duplicates = sorted(word for word, n in Counter(words).items() if n > 1)
            raise CaptionerError(f"vocabulary has duplicate words {short(duplicates)}; rebuild it")
        self.words = words
        self._index = {word: i for i, word in enumerate(words)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = MIN_WORD_COUNT) -> Vocabulary:
        """Vocabulary of every token seen at least `min_count` times, most frequent first.

        Ties are broken alphabetically so the same captions always give the same ids.
        """
        require_positive(min_count=min_count)
        counts = Counter(token for caption in captions for token in tokenize(caption))
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    def __contains__(self, word: str) -> bool:
        return word in self._index

    def id(self, word: str) -> int:
        """Id of `word`, or `unk_id` when it is not in the vocabulary."""
        return self._index.get(word, self.unk_id)

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        """`[start] w_1 .. w_n [end]`; with `max_len`, keeps only the first `max_len` words."""
        return self.encode_tokens(tokenize(text), max_len)

    def encode_tokens(self, tokens: list[str], max_len: int | None = None) -> list[int]:
        """`encode` for an already tokenized caption."""
        if max_len is not None:
            tokens = tokens[:max_len]
        return [self.start_id, *(self.id(t) for t in tokens), self.end_id]

    def decode_tokens(self, ids: Iterable[int]) -> list[str]:
        """Words for `ids` (ints or 0-d tensors): stops at `<end>`, drops `<start>` and `<pad>`."""
        words = []
        for raw in ids:
            i = int(raw)
            if i == self.end_id:
                break
            if i not in (self.start_id, self.pad_id):
                words.append(self.words[i])
        return words

    def decode(self, ids: Iterable[int]) -> str:
        """`decode_tokens` joined by single spaces."""
        return " ".join(self.decode_tokens(ids))

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as plain JSON, `{"words": [...]}`, atomically (a run that stops
        mid-write leaves no half file for the next run to load)."""
        write_text_atomic(path, json.dumps({"words": self.words}, ensure_ascii=False, indent=0))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a vocabulary written by `save`; raises CaptionerError naming the file if it is not one."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CaptionerError(f"vocabulary file {path} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CaptionerError(f"cannot read vocabulary file {path}: {error}") from None
        words = data.get("words") if isinstance(data, dict) else None
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise CaptionerError(f'vocabulary file {path} must hold {{"words": [str, ...]}}; rebuild it')
        try:
            return cls(words)
        except CaptionerError as error:
            raise CaptionerError(f"vocabulary file {path}: {error}") from None
