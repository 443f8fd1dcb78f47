"""Inference (``train.inference``, ``train.predict``): the API and CLI on a workdir from a short training run, checked
against the trainer's own restore + eval path; and every user error, without training."""
import csv
import json
import os

import numpy as np
import pytest

from configs import iemocap_mbaf
from mbaf_jax.encoders import text_cnn_rnn
from mbaf_jax.errors import UserError
from mbaf_jax.models import mbaf_iemocap
from train import workdir as workdir_lib
from train import inference
from train import optimizers
from train import predict

import plans  # tests/plans.py

CLASSES = ("ang", "hap", "neu", "sad")


# --------------------------------------------------------------------------- errors (fast)
def _fake_workdir(tmp_path, with_ckpt_dirs=False):
  w = tmp_path / "run"
  w.mkdir()
  (w / "config.json").write_text(json.dumps({"fingerprint": "x", "config": {
      "model": {"name": "dmf"}, "data": {"dataset": "iemocap"}}}))
  if with_ckpt_dirs:
    (w / "ckpt" / "dmf" / "loso_s1" / "latest").mkdir(parents=True)
  return w


def test_missing_or_file_workdir_is_explained(tmp_path):
  with pytest.raises(inference.PredictError, match=r"workdir '.*nope' does not exist"):
    inference.load(str(tmp_path / "nope"))
  f = tmp_path / "file"
  f.write_text("x")
  with pytest.raises(inference.PredictError, match=r"is a file"):
    inference.load(str(f))
  (tmp_path / "empty").mkdir()
  with pytest.raises(inference.PredictError, match=r"config.json not found.*not a training workdir"):
    inference.load(str(tmp_path / "empty"))
  (tmp_path / "empty" / "config.json").write_text("{not json")
  with pytest.raises(inference.PredictError, match=r"config.json is not a readable training config"):
    inference.load(str(tmp_path / "empty"))


def test_missing_checkpoint_is_explained(tmp_path):
  w = _fake_workdir(tmp_path)
  with pytest.raises(inference.PredictError, match=r"no checkpoints found in .*ckpt"):
    inference.find_checkpoint(str(w))
  (tmp_path / "b").mkdir()
  w2 = _fake_workdir(tmp_path / "b", with_ckpt_dirs=True)
  with pytest.raises(inference.PredictError, match=r"no finished checkpoint in .*loso_s1"):
    inference.find_checkpoint(str(w2))
  with pytest.raises(inference.PredictError, match=r"--fold='loso_s9' has no checkpoints.*loso_s1"):
    inference.find_checkpoint(str(w2), fold="loso_s9")
  with pytest.raises(inference.PredictError, match=r"--checkpoint='final'"):
    inference.find_checkpoint(str(w2), checkpoint="final")
  with pytest.raises(inference.PredictError, match=r"batch_size=0"):
    inference.load(str(w2), batch_size=0)


def test_unreadable_and_missing_wav_are_named(tmp_path):
  junk = tmp_path / "junk.wav"
  junk.write_bytes(b"RIFF not really a wav")
  with pytest.raises(inference.PredictError, match=r"cannot use audio file.*junk.wav.*readable"):
    inference.read_waves([str(junk)], 16000)
  with pytest.raises(inference.PredictError, match=r"cannot use audio file.*absent.wav"):
    inference.read_waves([str(tmp_path / "absent.wav")], 16000)


def test_manifest_and_wav_dir_parsing(tmp_path):
  m = tmp_path / "m.csv"
  m.write_text('wav,text\nsub/a.wav,"hello, you"\n/abs/b.wav,\n')
  rows = predict.read_manifest_rows(str(m))
  assert [r.path for r in rows] == [str(tmp_path / "sub" / "a.wav"), "/abs/b.wav"]
  assert [r.text for r in rows] == ["hello, you", ""] and not any(r.problem for r in rows)
  bad = tmp_path / "bad.csv"
  bad.write_text("path,transcript\na.wav,hi\n")
  with pytest.raises(inference.PredictError, match=r"columns 'wav' and 'text'"):
    predict.read_manifest_rows(str(bad))
  with pytest.raises(inference.PredictError, match=r"--manifest='.*missing.csv' cannot be read"):
    predict.read_manifest_rows(str(tmp_path / "missing.csv"))

  d = tmp_path / "wavs"
  d.mkdir()
  (d / "u1.wav").write_bytes(b"")
  (d / "u2.flac").write_bytes(b"")
  t = tmp_path / "t.txt"
  t.write_text("u1 I am fine\nu2.flac oh no\n\n")
  rows = predict.read_wav_dir_rows(str(d), str(t))
  assert [r.path for r in rows] == [str(d / "u1.wav"), str(d / "u2.flac")]
  assert [r.text for r in rows] == ["I am fine", "oh no"] and not any(r.problem for r in rows)
  t.write_text("u3 who\n")
  (row,) = predict.read_wav_dir_rows(str(d), str(t))
  assert (row.line, row.problem) == (1, f"names 'u3', which is not a file in --wav_dir={str(d)!r}")
  with pytest.raises(inference.PredictError, match=r"--wav_dir='.*nodir' is not a directory"):
    predict.read_wav_dir_rows(str(tmp_path / "nodir"), str(t))


def test_format_csv_rows():
  probs = np.array([[0.1, 0.6, 0.2, 0.1], [0.7, 0.1, 0.1, 0.1]], np.float32)
  rows = list(csv.reader(predict.format_csv(["a.wav", "b.wav"], ["x, y", "z"], probs,
                                            CLASSES).splitlines()))
  assert rows[0] == ["wav", "text", "pred", "p_ang", "p_hap", "p_neu", "p_sad"]
  assert rows[1][:3] == ["a.wav", "x, y", "hap"] and rows[2][2] == "ang"
  np.testing.assert_allclose([float(x) for x in rows[1][3:]], probs[0], atol=1e-6)


def test_cli_errors_exit_2_with_one_message(tmp_path, capsys):
  assert predict.run(["--workdir", str(tmp_path / "none"), "--wav", "a.wav", "--text", "x"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: workdir") and "Traceback" not in err
  assert predict.run(["--workdir", str(tmp_path)]) == 2
  assert "give exactly one input" in capsys.readouterr().err
  assert predict.run(["--workdir", str(tmp_path), "--wav", "a.wav"]) == 2
  assert "--wav needs --text" in capsys.readouterr().err


# --------------------------------------------------------------------------- trained workdir
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A DMF workdir from 3 training steps on the synthetic corpus (1 fold)."""
  from configs import iemocap
  from mbaf_jax.data import synthetic
  from train import loop
  base = tmp_path_factory.mktemp("predict")
  root = synthetic.write_iemocap(str(base / "data"), size="demo", seed=0)
  config = iemocap.get_config("smoke")
  config.fusions = "dmf"
  config.data.max_folds = 1
  config.data.data_dir = str(base / "data")
  config.train.max_steps = 3
  workdir = str(base / "run")
  loop.train_and_evaluate(config, workdir)
  wav_dir = os.path.join(root, "Session1", "sentences", "wav")
  wavs = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(wav_dir) for f in fs
                if f.endswith(".wav") and not f.startswith("."))[:3]
  return config, workdir, wavs


def _reference(config, workdir, wavs, texts):
  """The trainer's path: FoldCheckpointer + TrainState + make_eval_step, inputs read directly."""
  import jax
  import soundfile as sf
  from mbaf_jax import encoders, models
  from train import checkpoints as ckpt_lib
  from train import steps
  tok = encoders.TextPreprocessor(os.path.join(workdir, "tokenizer"),
                                  max_length=config.data.max_tokens)
  model, _ = models.build_model(config.model, "dmf", vocab_size=len(tok.tokenizer),
                                max_tokens=config.data.max_tokens)
  audio = encoders.AudioPreprocessor(None, max_seconds=config.data.max_seconds,
                                     sampling_rate=config.data.sample_rate)
  waves = [sf.read(p, dtype="float32")[0] for p in wavs]
  a, t = audio(waves), tok(texts)
  batch = {"input_values": a["input_values"], "audio_mask": a["attention_mask"],
           "input_ids": t["input_ids"], "text_mask": t["attention_mask"],
           "token_type_ids": t["token_type_ids"], "mask": np.ones((len(wavs),), bool)}
  # The trainer's initial variables of fold 0 (trainer.FoldRunner.init_state's key).
  variables = steps.init_variables(model, batch,
                                   jax.random.fold_in(jax.random.key(config.seed), 0))
  tx = optimizers.make_optimizer(config.optim, variables["params"], variables.get("memory", {}))
  state = steps.create_state(variables, tx)
  ck = ckpt_lib.FoldCheckpointer(os.path.join(workdir, "ckpt", "dmf", "loso_s1"),
                                 fingerprint=plans.fingerprint(config))
  try:
    restored = ck.restore_best(jax.device_get(state.saveable()))
    step = ck.best_step()
  finally:
    ck.close()
  state = steps.TrainState.from_saved(restored[0])
  log_probs = jax.jit(steps.make_eval_step(model.apply))(state, batch)
  return np.exp(np.asarray(log_probs)), state, variables, step


def test_predictor_matches_trainer_eval_and_never_writes_memory(trained):
  config, workdir, wavs = trained
  texts = ["I am so happy today", "leave me alone", "okay"]
  predictor = inference.load(workdir, batch_size=4)  # 3 rows + 1 masked pad row per call
  assert predictor.classes == CLASSES and predictor.fusion == "dmf"
  assert predictor.fold == "loso_s1" and predictor.checkpoint == "best"
  want, ref_state, init_vars, best_step = _reference(config, workdir, wavs, texts)
  assert predictor.step == best_step
  assert predictor.describe() == f"loaded dmf/loso_s1, best checkpoint at step {best_step}"
  got = predictor.predict_files(wavs, texts)
  assert got.shape == (3, 4)
  np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  # One row alone (other pad rows) gives the same probabilities: padding never leaks in.
  np.testing.assert_allclose(predictor.predict_files(wavs[1:2], texts[1:2])[0], got[1],
                             rtol=1e-5, atol=1e-7)
  assert predictor._apply._cache_size() == 1  # pylint: disable=protected-access
  # The memory is the trained one (training wrote it) and prediction never changes it.
  for name in ("M_a", "M_t"):
    mem = np.asarray(predictor.variables["memory"]["fusion"][name])
    np.testing.assert_array_equal(mem, np.asarray(ref_state.memory["fusion"][name]))
    assert np.abs(mem - np.asarray(init_vars["memory"]["fusion"][name])).max() > 0


def test_cli_single_wav_and_manifest(trained, tmp_path, capsys):
  _, workdir, wavs = trained
  predictor = inference.load(workdir)
  want = predictor.predict_files(wavs[:2], ["hello", "bye now"])
  assert predict.run(["--workdir", workdir, "--wav", wavs[0], "--text", "hello"]) == 0
  out = capsys.readouterr()
  line = out.out.strip()
  assert out.err.strip() == f"{predictor.describe()} from {workdir}"  # which checkpoint, one line
  assert line.startswith(wavs[0] + ": " + CLASSES[int(np.argmax(want[0]))])
  assert f"ang {want[0][0]:.4f}" in line
  m = tmp_path / "m.csv"
  with open(m, "w", newline="") as f:
    csv.writer(f).writerows([["wav", "text"], [wavs[0], "hello"], [wavs[1], "bye now"]])
  out = tmp_path / "probs.csv"
  assert predict.run(["--workdir", workdir, "--manifest", str(m), "--output", str(out)]) == 0
  rows = list(csv.DictReader(open(out)))
  assert [r["wav"] for r in rows] == wavs[:2]
  got = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
  np.testing.assert_allclose(got, want, atol=2e-6)
  junk = tmp_path / "junk.wav"
  junk.write_bytes(b"RIFF")
  assert predict.run(["--workdir", workdir, "--wav", str(junk), "--text", "x"]) == 2
  assert "junk.wav" in capsys.readouterr().err


def test_latest_checkpoint_and_inconsistent_or_damaged_workdirs(trained, tmp_path):
  """--checkpoint=latest loads the last step; a checkpoint that does not fit the workdir's
  config.json, or cannot be read, is a PredictError that says so (nothing is compiled)."""
  import shutil
  config, workdir, _ = trained
  latest = inference.load(workdir, checkpoint="latest")
  assert (latest.checkpoint, latest.step) == ("latest", config.train.max_steps)
  w = str(tmp_path / "copy")
  shutil.copytree(workdir, w)
  with open(workdir_lib.config_path(w)) as f:
    stored = json.load(f)
  with open(workdir_lib.config_path(w), "w") as f:
    json.dump(dict(stored, fingerprint="0123456789abcdef"), f)
  with pytest.raises(inference.PredictError,
                     match=r"different model/optimiser config.*the workdir is inconsistent"):
    inference.load(w)
  stored["config"]["model"]["fusion"]["dmf"]["slots"] += 1  # other memory shapes
  with open(workdir_lib.config_path(w), "w") as f:
    json.dump(dict(stored, fingerprint=None), f)
  with pytest.raises(inference.PredictError,
                     match=r"does not match this model's state.*the workdir is inconsistent"):
    inference.load(w)
  stored["config"]["model"]["fusion"]["dmf"]["slots"] -= 1
  with open(workdir_lib.config_path(w), "w") as f:
    json.dump(stored, f)
  ref = inference.find_checkpoint(w)
  state_dir = os.path.join(workdir_lib.slot_dir(w, ref.fusion, ref.fold, ref.slot),
                           str(ref.step), "state")
  shutil.rmtree(state_dir)
  with pytest.raises(inference.PredictError, match=r"could not read the checkpoint .*damaged"):
    inference.load(w)


def test_word_vocab_round_trip_and_errors(tmp_path):
  """The MBAF text vocabulary training saves (the mbaf_iemocap family) is what inference reads."""
  vocab = {"<pad>": 0, "<unk>": 1, "happy": 2, "été": 3}
  path = mbaf_iemocap.save_word_vocab(vocab, str(tmp_path))
  assert path == str(tmp_path / "vocab.json")
  assert mbaf_iemocap.load_word_vocab(str(tmp_path)) == vocab
  with pytest.raises(UserError, match=r"vocab.json is missing.*rerun training"):
    mbaf_iemocap.load_word_vocab(str(tmp_path / "nope"))
  (tmp_path / "vocab.json").write_text("[1, 2]")
  with pytest.raises(UserError, match="not a word → id map"):
    mbaf_iemocap.load_word_vocab(str(tmp_path))
  (tmp_path / "vocab.json").write_text("{oops")
  with pytest.raises(UserError, match="not a readable word vocabulary"):
    mbaf_iemocap.load_word_vocab(str(tmp_path))


def test_model_inputs_mbaf_saves_the_vocab_it_encodes_with(tmp_path):
  c = iemocap_mbaf.get_config("smoke")
  texts = ["Hello there, hello!", "I'm fine", ""]
  waves = np.ones((3, 20000), np.float32)
  inputs, vocab_size = plans.model_inputs(
      c, str(tmp_path), {"waves": waves, "lengths": np.array([20000, 500, 0]), "texts": texts})
  vocab = mbaf_iemocap.load_word_vocab(str(tmp_path))
  assert vocab_size == len(vocab) == 2 + 6  # <pad>, <unk>, hello there , ! i'm fine
  ids, mask = text_cnn_rnn.encode_texts(texts, vocab, max_tokens=c.data.max_tokens)
  np.testing.assert_array_equal(inputs["token_ids"], ids)
  np.testing.assert_array_equal(inputs["text_mask"], mask)
  assert inputs["token_ids"][0, 0] == vocab["hello"] == inputs["token_ids"][0, 3]
  assert inputs["waves"].shape == (3, 16000)  # smoke: max_seconds 1.0 at 16 kHz
  np.testing.assert_array_equal(inputs["lengths"], [16000, 500, 0])


def test_cli_npy_needs_a_cebs_workdir_message(tmp_path, capsys):
  w = _fake_workdir(tmp_path)
  assert predict.run(["--workdir", str(w), "--npy", "a.npy", "--wav", "b.wav"]) == 2
  assert "give exactly one input" in capsys.readouterr().err


def test_output_is_checked_before_anything_is_loaded(tmp_path, capsys, monkeypatch):
  """A missing --output folder (or a directory as --output) is one sentence, exit 2, before the
  model is loaded or any prediction computed."""
  def never(*args, **kwargs):
    raise AssertionError("inference.load was called before --output was checked")
  monkeypatch.setattr(inference, "load", never)
  m = tmp_path / "m.csv"
  m.write_text("wav,text\na.wav,hi\n")
  for output, cause in ((tmp_path / "missing" / "x.csv", "does not exist"),
                        (tmp_path, "is a directory")):
    assert predict.run(["--workdir", str(tmp_path), "--manifest", str(m),
                        "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --output=") and cause in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_manifest_rows_training_manifest_and_bad_rows(tmp_path):
  """read_manifest_rows: predict's wav,text CSV and a training manifest (audio,text,label,group;
  CSV or JSONL) as it is; a bad row is kept with its line and problem."""
  (tmp_path / "t.csv").write_text("audio,text,label,group\nclips/a.wav,hi,ang,s1\n,x,neu,s2\n")
  rows = predict.read_manifest_rows(str(tmp_path / "t.csv"))
  assert [(r.line, r.path, r.text, r.problem) for r in rows] == [
      (2, str(tmp_path / "clips" / "a.wav"), "hi", ""), (3, "", "x", "empty 'audio' column")]
  (tmp_path / "t.jsonl").write_text(
      '{"audio": "/abs/b.wav", "text": "yo", "label": "sad", "group": "s1"}\n\n[1]\n')
  rows = predict.read_manifest_rows(str(tmp_path / "t.jsonl"))
  assert [(r.line, r.path, r.problem) for r in rows] == [
      (1, "/abs/b.wav", ""), (3, "", "the line is not a JSON object")]


def test_cli_bad_rows_are_reported_good_rows_written(trained, tmp_path, capsys):
  """One bad manifest row no longer fails the batch: the good rows are written (same
  probabilities as alone), the bad ones reported by line with their reason, exit 1; --strict
  stops at the first bad row (exit 2, naming its line). A training manifest is accepted."""
  _, workdir, wavs = trained
  want = inference.load(workdir).predict_files(wavs[:2], ["hello", "bye now"])
  junk = tmp_path / "junk.wav"
  junk.write_bytes(b"RIFF not really a wav")
  m = tmp_path / "train.csv"
  with open(m, "w", newline="") as f:
    csv.writer(f).writerows([["audio", "text", "label", "group"], [wavs[0], "hello", "ang", "1"],
                             [str(tmp_path / "absent.wav"), "x", "ang", "1"],
                             [str(junk), "y", "neu", "1"], ["", "z", "sad", "2"],
                             [wavs[1], "bye now", "sad", "2"]])
  out = tmp_path / "probs.csv"
  capsys.readouterr()
  assert predict.run(["--workdir", workdir, "--manifest", str(m), "--output", str(out)]) == 1
  err = capsys.readouterr().err
  assert "3 of 5 rows" in err and "Traceback" not in err
  assert "line 3:" in err and "absent.wav" in err and "line 4:" in err and "junk.wav" in err
  assert "line 5: empty 'audio' column" in err
  rows = list(csv.DictReader(open(out)))
  assert [r["wav"] for r in rows] == wavs[:2]
  got = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
  np.testing.assert_allclose(got, want, atol=2e-6)
  out.unlink()
  assert predict.run(["--workdir", workdir, "--manifest", str(m), "--output", str(out),
                      "--strict"]) == 2
  err = capsys.readouterr().err
  assert "line 3:" in err and "absent.wav" in err and "--strict" in err and not out.exists()


def test_class_names_come_from_the_workdir_never_another_data_set(tmp_path):
  """metrics.json's class names, else the run's data set's: IEMOCAP's, CEBS's, or a manifest
  run's own (its class_names, else its manifest's sorted labels) — never another data set's."""
  import ml_collections as mlc
  w = str(tmp_path)

  def config(dataset, num_classes, **data):  # the data and model sections of a run's config
    c = mlc.ConfigDict({"data": dict(dataset=dataset, **data),
                        "model": {"num_classes": num_classes}})
    return c.data, c.model

  assert inference.class_names(w, *config("iemocap", 4)) == CLASSES
  assert inference.class_names(w, *config("cebs", 3)) == ("basal", "music", "post-music")
  m = tmp_path / "mine.csv"
  m.write_text("audio,text,label,group\na.wav,hi,yes,g1\nb.wav,ho,no,g2\nc.wav,,maybe,g1\n")
  assert inference.class_names(w, *config("manifest", 3, data_dir=str(m), class_names="")) == (
      "maybe", "no", "yes")
  assert inference.class_names(w, *config("manifest", 2, data_dir=str(m),
                                         class_names="yes,no")) == ("yes", "no")
  gone = config("manifest", 3, data_dir=str(tmp_path / "gone.csv"), class_names="")
  with pytest.raises(inference.PredictError, match=r"class names of this run are unknown.*"
                     r"metrics.json is missing.*gone.csv' does not exist"):
    inference.class_names(w, *gone)
  with pytest.raises(inference.PredictError, match=r"3 classes .* but its model has 4 outputs"):
    inference.class_names(w, *config("manifest", 4, data_dir=str(m), class_names=""))
  (tmp_path / "metrics.json").write_text(json.dumps({"class_names": ["p", "q", "r"]}))
  assert inference.class_names(w, *gone) == ("p", "q", "r")
