"""Specification of the tokenizer interface, CharTokenizer and pad_batch."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ttc_jax.tasks import CharTokenizer, Tokenizer, pad_batch

ALPHABET = "0123456789+-*=:QA\n"
TOK = CharTokenizer()

alphabet_text = st.text(alphabet=ALPHABET, max_size=60)


def test_default_vocab_is_three_specials_plus_eighteen_characters():
    assert TOK.vocab_size == 21
    assert (TOK.pad_id, TOK.bos_id, TOK.eos_id) == (0, 1, 2)
    assert TOK.encode(ALPHABET) == list(range(3, 21))


def test_step_delimiter_id_is_the_newline_token():
    assert TOK.step_delimiter_id == TOK.encode("\n")[0] == 20
    assert CharTokenizer(step_delimiter=None).step_delimiter_id is None
    assert CharTokenizer(alphabet="ab|", step_delimiter="|").step_delimiter_id == 5


def test_char_tokenizer_satisfies_the_tokenizer_protocol():
    assert isinstance(TOK, Tokenizer)


@given(alphabet_text)
def test_encode_then_decode_is_identity_on_alphabet_text(text):
    ids = TOK.encode(text)
    assert len(ids) == len(text)
    assert all(3 <= i < TOK.vocab_size for i in ids)
    assert TOK.decode(ids) == text


@given(alphabet_text)
def test_bos_and_eos_are_added_on_request_and_skipped_when_decoding(text):
    ids = TOK.encode(text, add_bos=True, add_eos=True)
    assert ids == [TOK.bos_id, *TOK.encode(text), TOK.eos_id]
    assert TOK.decode(ids) == text
    assert TOK.decode(ids, skip_special=False) == f"<bos>{text}<eos>"


@given(alphabet_text, alphabet_text)
def test_decode_until_eos_cuts_at_the_first_eos_and_drops_pad_and_bos(before, after):
    ids = [TOK.bos_id, *TOK.encode(before), TOK.eos_id, *TOK.encode(after), TOK.eos_id]
    ids += [TOK.pad_id] * 3
    assert TOK.decode_until_eos(ids) == before
    assert TOK.decode_until_eos(np.array(ids, dtype=np.int32)) == before
    assert TOK.decode(ids) == before + after  # plain decode does not stop at eos


def test_decode_until_eos_without_eos_decodes_everything():
    assert TOK.decode_until_eos(TOK.encode("12+3") + [TOK.pad_id]) == "12+3"


def test_unknown_character_error_names_the_character_and_its_position():
    with pytest.raises(ValueError, match=r"'x' at position 3.*0123456789"):
        TOK.encode("1+2x")


def test_decode_rejects_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match="id 21 at position 1"):
        TOK.decode([3, 21])


def test_bad_alphabets_are_rejected():
    with pytest.raises(ValueError, match="repeats"):
        CharTokenizer(alphabet="aba")
    with pytest.raises(ValueError, match="step_delimiter"):
        CharTokenizer(alphabet="abc")  # default delimiter "\n" is missing


@given(
    st.lists(st.lists(st.integers(3, 20), max_size=12), min_size=1, max_size=6),
    st.integers(1, 8),
)
def test_pad_batch_right_pads_rows_to_a_multiple(seqs, multiple_of):
    tokens, lengths = pad_batch(seqs, pad_id=0, multiple_of=multiple_of)
    longest = max(len(s) for s in seqs)
    expected_t = -(-longest // multiple_of) * multiple_of
    assert tokens.shape == (len(seqs), expected_t)
    assert tokens.dtype == np.int32 and lengths.dtype == np.int32
    assert lengths.tolist() == [len(s) for s in seqs]
    for row, seq in zip(tokens, seqs):
        assert row[: len(seq)].tolist() == seq
        assert (row[len(seq) :] == 0).all()


def test_pad_batch_with_length_uses_it_and_the_pad_id():
    tokens, lengths = pad_batch([[5, 6], [7]], pad_id=9, length=4)
    np.testing.assert_array_equal(tokens, [[5, 6, 9, 9], [7, 9, 9, 9]])
    np.testing.assert_array_equal(lengths, [2, 1])


def test_pad_batch_rejects_a_row_longer_than_length_and_says_which():
    with pytest.raises(ValueError, match=r"row 1 has 5 tokens, 2 more than length=3"):
        pad_batch([[1], [1, 2, 3, 4, 5]], pad_id=0, length=3)
