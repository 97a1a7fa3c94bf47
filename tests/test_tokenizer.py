"""Tokenizer: training, round trip, saving/loading, BERT vocab.txt loading, padding."""
from __future__ import annotations

import pytest

from ivt.errors import TokenizerError
from ivt.text.tokenizer import Tokenizer

CAPTIONS = [
    "A woman with long black hair is wearing a red coat, blue jeans and white sneakers.",
    "The man wears a grey hoodie, black trousers and brown shoes. He carries a backpack.",
    "A lady in a pink dress and black boots is holding an umbrella.",
] * 5


def test_train_round_trip_and_padding():
    tok = Tokenizer.train(CAPTIONS, vocab_size=300, min_frequency=1, max_length=32)
    ids, mask = tok(["A Woman in a RED coat.", "black"])
    assert ids.shape == mask.shape and ids.shape[0] == 2 and ids.shape[1] <= 32
    assert mask[1].sum() == 3  # [CLS] black [SEP]
    assert ids[1, 3:].eq(tok.pad_id).all()
    assert tok.decode(ids[0]) == "a woman in a red coat."
    assert tok.hf.id_to_token(int(ids[0, 0])) == "[CLS]"


def test_truncation_to_max_length():
    tok = Tokenizer.train(CAPTIONS, vocab_size=300, min_frequency=1, max_length=8)
    ids, mask = tok(CAPTIONS[0])
    assert ids.shape == (1, 8) and mask.sum() == 8
    assert tok.hf.id_to_token(int(ids[0, -1])) == "[SEP]"


def test_save_and_load_gives_identical_ids(tmp_path):
    tok = Tokenizer.train(CAPTIONS, vocab_size=300, min_frequency=1, max_length=40)
    tok.save(tmp_path)
    again = Tokenizer.from_file(tmp_path, max_length=40)
    a, _ = tok(CAPTIONS[:3])
    b, _ = again(CAPTIONS[:3])
    assert a.tolist() == b.tolist()
    assert again.vocab_size == tok.vocab_size


def test_load_bert_style_vocab_txt(tmp_path):
    vocab = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "coat", "wo", "##man", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = Tokenizer.from_file(tmp_path / "vocab.txt", max_length=16)
    ids, _ = tok("A WOMAN, red coat.")
    # [CLS]=3 a=6 wo=9 ##man=10 ,=[UNK]=2 red=7 coat=8 .=11 [SEP]=4, as BERT would give
    assert ids[0].tolist() == [3, 6, 9, 10, 2, 7, 8, 11, 4]
    assert tok.pad_id == 0


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        Tokenizer.from_file(tmp_path)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json: not a valid tokenizer"):
        Tokenizer.from_file(bad)
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"lacks"):
        Tokenizer.from_file(tmp_path / "vocab.txt")


def test_training_is_deterministic_and_leaves_out_unknown_words():
    a = Tokenizer.train(CAPTIONS, vocab_size=300, min_frequency=1)
    b = Tokenizer.train(list(CAPTIONS), vocab_size=300, min_frequency=1)
    assert a.hf.get_vocab() == b.hf.get_vocab()
    # the vocabulary is the captions' 36 distinct words and marks plus the 5 special tokens
    assert a.vocab_size == 41 and a.closed
    ids, mask = a(["a padded red coat: rabbit", "a red coat"])
    assert ids[0].tolist() == ids[1].tolist() and mask[0].tolist() == [1] * 5
    assert a.unknown_words("A PADDED red coat: rabbit, padded") == ["padded", ":", "rabbit"]
    assert a.unknown_words("a red coat") == []
    ids, mask = a("rabbit")  # nothing known: [CLS] [SEP]
    assert ids.tolist() == [[a.hf.token_to_id("[CLS]"), a.sep_id]]
    with pytest.raises(ValueError, match="too small"):
        Tokenizer.train(CAPTIONS, vocab_size=5)
    with pytest.raises(ValueError, match="no word occurs 2"):
        Tokenizer.train(["one caption only"], vocab_size=50)


def test_unknown_words_do_not_count_against_the_length_limit():
    tok = Tokenizer.train(CAPTIONS, vocab_size=300, min_frequency=1, max_length=6)
    ids, mask = tok(["zebra " * 20 + "a red coat", "a woman with long black hair"])
    assert tok.decode(ids[0]) == "a red coat" and mask[0].sum() == 5
    assert ids.shape == (2, 6) and tok.hf.id_to_token(int(ids[1, -1])) == "[SEP]"
    assert tok.decode(ids[1]) == "a woman with long"


def test_an_open_wordpiece_vocabulary_names_no_unknown_words(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "wo", "##man"]) + "\n")
    tok = Tokenizer.from_file(tmp_path / "vocab.txt")
    assert not tok.closed and tok.unknown_words("a woman zebra") == []
