"""load_glove: the standard glove.*.txt reader behind the MBAF §4.1 text encoder."""
import jax
import numpy as np
import pytest

from mbaf_jax.encoders.glove import load_glove

VOCAB = {"<pad>": 0, "<unk>": 1, "the": 2, "cat": 3, "zyxq": 4, "Sat": 5}


def _write(tmp_path, lines, name="glove.test.4d.txt"):
  p = tmp_path / name
  p.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return p


GOOD = ["the 0.1 0.2 0.3 0.4", "cat -1 -2 -3 -4", "sat 5 6 7 8.5", "dog 9 9 9 9",
        ". . . 1 1 1 1"]  # the last one: a word containing spaces (glove.840B)


def test_hits_misses_and_rows(tmp_path):
  table = load_glove(_write(tmp_path, GOOD), VOCAB, dim=4, key=jax.random.key(3))
  m = table.matrix
  assert m.shape == (6, 4) and m.dtype == np.float32
  np.testing.assert_array_equal(m[0], 0)  # padding row
  np.testing.assert_allclose(m[2], [0.1, 0.2, 0.3, 0.4])
  np.testing.assert_allclose(m[3], [-1, -2, -3, -4])
  np.testing.assert_allclose(m[5], [5, 6, 7, 8.5])  # "Sat" found lowercased
  assert (table.hits, table.misses) == (3, 2) and table.missing == ("<unk>", "zyxq")
  # misses: random normal from the key, scaled to the std of the found vectors
  want_std = np.std(np.stack([m[2], m[3], m[5]]))
  noise = np.asarray(jax.random.normal(jax.random.key(3), (6, 4))) * want_std
  np.testing.assert_allclose(m[[1, 4]], noise[[1, 4]], rtol=1e-5)
  again = load_glove(_write(tmp_path, GOOD), VOCAB, dim=4, key=jax.random.key(3))
  np.testing.assert_array_equal(again.matrix, m)  # deterministic from the key


def test_list_vocab_word_with_spaces_and_no_lowercase_fallback(tmp_path):
  table = load_glove(_write(tmp_path, GOOD), ["<pad>", ". . .", "Sat"], dim=4, unk_std=0.0,
                     lowercase_fallback=False)
  np.testing.assert_allclose(table.matrix[1], [1, 1, 1, 1])
  np.testing.assert_array_equal(table.matrix[2], 0)  # unk_std=0 -> zero vector
  assert (table.hits, table.misses) == (1, 1)


def test_word2vec_header_is_accepted_and_checked(tmp_path):
  table = load_glove(_write(tmp_path, ["5 4"] + GOOD), VOCAB, dim=4)
  assert table.hits == 3
  with pytest.raises(ValueError, match="header says vectors have dimension 4, expected dim=300"):
    load_glove(_write(tmp_path, ["5 4"] + GOOD), VOCAB)


def test_malformed_line_names_the_line_number(tmp_path):
  bad = GOOD[:2] + ["sat 5 6 7"] + GOOD[3:]
  with pytest.raises(ValueError, match=r"glove.test.4d.txt:3: malformed line with 4 fields"):
    load_glove(_write(tmp_path, bad), VOCAB, dim=4)
  bad = GOOD[:3] + ["cat"] + GOOD[3:]
  with pytest.raises(ValueError, match=r":4: malformed"):
    load_glove(_write(tmp_path, bad), VOCAB, dim=4)
  bad = GOOD[:1] + ["cat 1 2 x 4"]
  with pytest.raises(ValueError, match=r":2: malformed line, a vector field is not a number"):
    load_glove(_write(tmp_path, bad), VOCAB, dim=4)


def test_dimension_mismatch_is_an_error(tmp_path):
  with pytest.raises(ValueError, match=r"vectors have dimension 4 \(line 1\), expected dim=300"):
    load_glove(_write(tmp_path, GOOD), VOCAB)  # default dim=300
  with pytest.raises(ValueError, match=r"vectors have dimension 4 \(line 1\), expected dim=3"):
    load_glove(_write(tmp_path, GOOD), VOCAB, dim=3)


def test_missing_file_and_bad_vocab(tmp_path):
  with pytest.raises(FileNotFoundError, match="glove.missing.txt.*glove=None"):
    load_glove(tmp_path / "glove.missing.txt", VOCAB)
  with pytest.raises(ValueError, match="ids 0..V-1"):
    load_glove(_write(tmp_path, GOOD), {"a": 0, "b": 2}, dim=4)
  with pytest.raises(TypeError, match="vocab must be"):
    load_glove(_write(tmp_path, GOOD), "the cat", dim=4)
