import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from captioner.errors import CaptionerError
from captioner.vocab import END, PAD, START, UNK, Vocabulary, tokenize


def test_tokenize_lowercases_and_splits_punctuation():
    assert tokenize("A Red circle, on the LEFT.") == ["a", "red", "circle", ",", "on", "the", "left", "."]
    assert tokenize("three shapes: a, b!") == ["three", "shapes", ":", "a", ",", "b", "!"]
    assert tokenize("  \t\n ") == []


def test_tokenize_keeps_inner_apostrophes_and_numbers():
    assert tokenize("Don't stop") == ["don't", "stop"]
    assert tokenize("the dog\u2019s ball") == ["the", "dog's", "ball"]
    assert tokenize("'quoted'") == ["'", "quoted", "'"]
    assert tokenize("2 dogs") == ["2", "dogs"]


def test_tokenize_unicode_words():
    assert tokenize("Ein Mädchen fährt Rad.") == ["ein", "mädchen", "fährt", "rad", "."]
    assert tokenize("Собака бежит!") == ["собака", "бежит", "!"]
    # Devanagari vowel signs are combining marks: the word must stay whole.
    assert tokenize("नमस्ते दुनिया") == ["नमस्ते", "दुनिया"]
    # Decomposed and composed accents give the same token.
    assert tokenize("cafe\u0301") == tokenize("caf\u00e9") == ["caf\u00e9"]


def test_build_orders_specials_then_frequency_and_applies_min_count():
    captions = ["a red circle", "a blue circle", "a red square", "a green triangle"]
    vocab = Vocabulary.build(captions, min_count=2)
    assert vocab.words[:4] == [PAD, START, END, UNK]
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)
    # a x4, circle x2, red x2 (tie broken alphabetically); once-seen words dropped.
    assert vocab.words[4:] == ["a", "circle", "red"]
    assert "green" not in vocab and vocab.id("green") == vocab.unk_id
    assert len(Vocabulary.build(captions, min_count=1)) == 4 + 7


def test_build_rejects_min_count_below_one():
    with pytest.raises(CaptionerError, match="min_count"):
        Vocabulary.build(["a"], min_count=0)


def test_encode_decode_round_trip_and_unknown_words():
    vocab = Vocabulary.build(["a red circle in the center"])
    ids = vocab.encode("A red circle in the center")
    assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id and len(ids) == 8
    assert vocab.decode(ids) == "a red circle in the center"
    assert vocab.decode_tokens(vocab.encode("a purple circle")) == ["a", UNK, "circle"]


def test_encode_truncates_to_max_len_words():
    vocab = Vocabulary.build(["one two three four"])
    ids = vocab.encode("one two three four", max_len=2)
    assert vocab.decode(ids) == "one two"
    assert ids[-1] == vocab.end_id and len(ids) == 4


def test_decode_stops_at_end_and_drops_start_and_pad_and_accepts_tensors():
    vocab = Vocabulary.build(["a red circle"])
    ids = torch.tensor([1, vocab.id("a"), 0, vocab.id("red"), 2, vocab.id("circle"), 0])
    assert vocab.decode(ids) == "a red"


def test_save_load_plain_json(tmp_path):
    vocab = Vocabulary.build(["Ein Mädchen , a red circle"])
    path = tmp_path / "sub" / "vocab.json"
    vocab.save(path)
    assert json.loads(path.read_text(encoding="utf-8")) == {"words": vocab.words}
    assert Vocabulary.load(path) == vocab
    assert Vocabulary(list(vocab.words)) == vocab


@pytest.mark.parametrize(
    "content, message",
    [("{not json", "cannot read"), ('{"words": "abc"}', "must hold"), ('{"words": ["a", "b"]}', "special tokens")],
)
def test_load_rejects_bad_files_naming_them(tmp_path, content, message):
    path = tmp_path / "vocab.json"
    path.write_text(content)
    with pytest.raises(CaptionerError, match=message) as info:
        Vocabulary.load(path)
    assert str(path) in str(info.value)


def test_load_missing_file_and_duplicates():
    with pytest.raises(CaptionerError, match="does not exist"):
        Vocabulary.load("/nonexistent/vocab.json")
    with pytest.raises(CaptionerError, match="duplicate"):
        Vocabulary([PAD, START, END, UNK, "a", "a"])


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_round_trip_property_on_any_text(text):
    vocab = Vocabulary.build([text])
    tokens = tokenize(text)
    assert vocab.decode_tokens(vocab.encode(text)) == tokens
    # Tokenizing is stable: the joined tokens tokenize to themselves.
    assert tokenize(" ".join(tokens)) == tokens
