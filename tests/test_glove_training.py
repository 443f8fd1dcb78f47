"""config.model.text.glove → the MBAF IEMOCAP text encoder's embedding (MBAF §4.1: GloVe-300d):
loaded for the run's vocabulary (the mbaf_iemocap family's glove_embedding / text_embedding),
substituted after init through build_model's ``pretrained`` / merge_pretrained, trained, and
served by train.inference without the file."""
import json
import os
import warnings

import jax
import numpy as np
import pytest

from configs import iemocap_mbaf
from mbaf_jax.data import synthetic
from mbaf_jax.models import factory
from mbaf_jax.models import mbaf_iemocap
from train import loop
from train import datasets
from train import inference
from train.errors import UserError

import plans  # tests/plans.py

DIM = 16  # configs/iemocap_mbaf.py:smoke text encoder: embed_dim=16
TEXTS = ["Hello there, hello!", "I'm fine", "Fine THERE"]
# vocab of TEXTS (build_vocab, by frequency then alphabetically): <pad> 0, <unk> 1, fine 2,
# hello 3, there 4, ! 5, , 6, i'm 7
IN_FILE = {"hello": np.arange(DIM, dtype=np.float32) / 7 - 1.0,
           "there": np.linspace(-2.0, 3.0, DIM).astype(np.float32),
           "i'm": np.full(DIM, 0.25, np.float32),
           "unrelated": np.ones(DIM, np.float32)}


def _glove_file(path, vectors=IN_FILE):
  with open(path, "w", encoding="utf-8") as f:
    for w, v in vectors.items():
      f.write(w + " " + " ".join(repr(float(x)) for x in v) + "\n")
  return str(path)


def _setup(tmp_path, glove=None):
  """Smoke config with ``glove`` set, the vocab of TEXTS saved in ``tmp_path``, and a Dataset."""
  c = iemocap_mbaf.get_config("smoke")
  c.fusions = "mbaf"
  c.train.batch_size = 2
  c.model.text.glove = glove if glove is not None else _glove_file(tmp_path / "glove.t.16d.txt")
  waves = np.linspace(-1, 1, 3 * 16000, dtype=np.float32).reshape(3, 16000)
  inputs, vocab_size = plans.model_inputs(
      c, str(tmp_path), {"waves": waves, "lengths": np.full((3,), 16000), "texts": TEXTS})
  vocab = mbaf_iemocap.load_word_vocab(str(tmp_path))
  ds = datasets.Dataset(inputs, np.array([0, 1, 2], np.int32), [], ("a", "b", "c", "d"),
                        vocab_size)
  return c, vocab, ds


def test_glove_embedding_rows_padding_and_missing_words(tmp_path, capsys):
  c, vocab, _ = _setup(tmp_path)
  assert vocab == {"<pad>": 0, "<unk>": 1, "fine": 2, "hello": 3, "there": 4, "!": 5, ",": 6,
                   "i'm": 7}
  m = mbaf_iemocap.glove_embedding(c.model, vocab, seed=c.seed)
  assert m.shape == (8, DIM) and m.dtype == np.float32
  for w in ("hello", "there", "i'm"):  # exactly the file's vectors
    np.testing.assert_array_equal(m[vocab[w]], IN_FILE[w])
  np.testing.assert_array_equal(m[0], np.zeros(DIM))  # <pad>
  # missing words (<unk>, fine, !, ,): N(0, sigma^2) from fold_in(key(seed), GLOVE_KEY_SALT), sigma
  # = std of the found vectors
  sigma = np.stack([IN_FILE[w] for w in ("hello", "there", "i'm")]).std()
  key = jax.random.fold_in(jax.random.key(c.seed), mbaf_iemocap.GLOVE_KEY_SALT)
  noise = np.asarray(jax.random.normal(key, (8, DIM)), np.float32) * sigma
  for i in (1, 2, 5, 6):
    np.testing.assert_allclose(m[i], noise[i], rtol=1e-6)
  out = capsys.readouterr().out
  assert "3/7 vocabulary words found, 4 missing" in out and "<unk>, fine, !, ," in out
  same_key = mbaf_iemocap.glove_embedding(c.model, vocab, seed=c.seed, verbose=False)
  np.testing.assert_array_equal(same_key, m)


def test_compiled_model_init_state_uses_the_glove_rows(tmp_path):
  c, vocab, ds = _setup(tmp_path)
  ds.text_embedding = mbaf_iemocap.glove_embedding(c.model, vocab, seed=c.seed, verbose=False)
  with warnings.catch_warnings():
    warnings.simplefilter("error", UserWarning)  # no "no GloVe matrix" warning
    runner = loop.CompiledModel(plans.plan(c, num_devices=1), "mbaf", ds)
    state = runner.init_host_state(0)
  assert set(runner.pretrained) == {"text/embedding"}
  table = np.asarray(state.params["text"]["embedding"])
  np.testing.assert_array_equal(table, ds.text_embedding)
  np.testing.assert_array_equal(table[vocab["there"]], IN_FILE["there"])
  assert "birnn" in state.params["text"] and "dense" in state.params["text"]  # rest kept


def test_bad_glove_files_are_user_errors(tmp_path):
  c, vocab, _ = _setup(tmp_path)
  c.model.text.glove = str(tmp_path / "nope.txt")
  with pytest.raises(UserError, match=r"config.model.text.glove='.*nope.txt' does not exist; "
                     r"expected a GloVe text file of 16-d vectors"):
    mbaf_iemocap.glove_embedding(c.model, vocab, seed=c.seed)
  c.model.text.glove = _glove_file(tmp_path / "glove.6B.4d.txt",
                                   {"hello": np.ones(4), "there": np.zeros(4)})
  with pytest.raises(UserError, match=r"glove.6B.4d.txt.*vectors have dimension 4.*expected "
                     r"dim=16.*config.model.text.kwargs.embed_dim=16"):
    mbaf_iemocap.glove_embedding(c.model, vocab, seed=c.seed)
  bad = tmp_path / "glove.bad.txt"
  bad.write_text("hello " + " ".join(["0.5"] * DIM) + "\nthere 1 2 x\n")
  c.model.text.glove = str(bad)
  with pytest.raises(UserError, match=r"glove.bad.txt:2: malformed line"):
    mbaf_iemocap.glove_embedding(c.model, vocab, seed=c.seed)
  binary = tmp_path / "glove.bin"
  binary.write_bytes(b"\xff\xfe\x00\x81" * 50)
  c.model.text.glove = str(binary)
  with pytest.raises(UserError, match=r"glove.bin.*cannot be used.*GloVe text file"):
    mbaf_iemocap.glove_embedding(c.model, vocab, seed=c.seed)


def test_build_model_checks_the_matrix_and_merge_replaces_one_leaf():
  c = iemocap_mbaf.get_config("smoke")
  with pytest.raises(ValueError, match=r"text_embedding has shape \(8, 300\).*\(8, 16\)"):
    factory.build_model(c.model, "mbaf", vocab_size=8, max_tokens=16,
                        text_embedding=np.zeros((8, 300)))
  model, pretrained = factory.build_model(c.model, "mbaf", vocab_size=8, max_tokens=16)
  assert pretrained == {} and model.text.warn_random_embedding
  c.model.text.glove = "/some/glove.txt"  # inference: no matrix, but no warning either
  model, pretrained = factory.build_model(c.model, "mbaf", vocab_size=8, max_tokens=16)
  assert pretrained == {} and model.text.warn_random_embedding is False
  params = {"text": {"embedding": np.zeros((3, 2)), "dense": {"kernel": np.ones((2, 2))}},
            "head": {"bias": np.ones(2)}}
  new = np.arange(6.0).reshape(3, 2)
  out = factory.merge_pretrained(params, {"text/embedding": new})
  np.testing.assert_array_equal(out["text"]["embedding"], new)
  np.testing.assert_array_equal(out["text"]["dense"]["kernel"], np.ones((2, 2)))
  assert out["head"] is params["head"] and params["text"]["embedding"].sum() == 0  # not mutated
  with pytest.raises(ValueError, match=r"'text/embedding' is \(4, 2\) in the checkpoint but "
                     r"\(3, 2\) in the model"):
    factory.merge_pretrained(params, {"text/embedding": np.zeros((4, 2))})
  with pytest.raises(ValueError, match=r"text has no 'embed' parameters"):
    factory.merge_pretrained(params, {"text/embed": new})


# One smoke training run (compiles init + train + eval, ~20-30 s of CPU), hence slow.
@pytest.mark.slow
def test_smoke_training_with_glove_and_predict_without_the_file(tmp_path, capsys):
  synthetic.write_iemocap(str(tmp_path / "data"), size="demo", seed=0)
  c = iemocap_mbaf.get_config("III,smoke")
  c.fusions = "mbaf"
  c.data.data_dir = str(tmp_path / "data")
  c.data.synthetic = False
  c.data.max_folds = 1
  c.train.max_steps = 2
  c.model.text.kwargs.train_embedding = False  # frozen: the checkpoint keeps the GloVe rows
  workdir = str(tmp_path / "run")
  plans.load_dataset(c, workdir)  # writes the run's vocab.json
  with open(os.path.join(workdir, "vocab.json")) as f:
    vocab = json.load(f)
  rng = np.random.default_rng(0)
  known = sorted(vocab)[::2]
  known = [w for w in known if w != "<pad>"]
  vectors = {w: rng.normal(size=DIM).astype(np.float32) for w in known}
  glove = tmp_path / "glove.t.16d.txt"
  c.model.text.glove = _glove_file(glove, vectors)
  loop.train_and_evaluate(c, workdir)
  assert f"{len(known)}/{len(vocab) - 1} vocabulary words found" in capsys.readouterr().out
  os.remove(glove)  # inference needs the workdir only
  p = inference.load(workdir)
  table = np.asarray(p.variables["params"]["text"]["embedding"])
  for w, v in vectors.items():
    np.testing.assert_array_equal(table[vocab[w]], v)
  np.testing.assert_array_equal(table[0], np.zeros(DIM))
  probs = p([np.zeros(8000, np.float32)] * 2, ["hello there", "fine"])
  assert probs.shape == (2, 4) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)
