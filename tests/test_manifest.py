"""Bring-your-own-data manifests (mbaf_jax/data/manifest.py, configs/manifest.py).

The manifests are written from the synthetic IEMOCAP corpus; the loader's output is checked
against the corpus itself (labels, texts, audio decoded independently with soundfile) and the
grouped folds against their definition (no group on both sides, test sets partition the rows).
"""
import csv
import json
import os

import numpy as np
import pytest
import soundfile as sf

from configs import manifest as manifest_config
from mbaf_jax.data import iemocap, synthetic
from mbaf_jax.data import manifest
from mbaf_jax.data.report import DataError, LoadSummary
from train import main as main_lib
from train.errors import UserError

import plans  # tests/plans.py

CLASSES = ("ang", "hap", "neu", "sad")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """(directory, rows): a tiny synthetic IEMOCAP corpus and its (audio, text, label, group)."""
  base = tmp_path_factory.mktemp("byod")
  root = synthetic.write_iemocap(str(base), size="tiny", seed=3)
  c = iemocap.load_iemocap(root, verbose=False)
  rows = [{"audio": os.path.relpath(u.wav_path, str(base)), "text": u.text,
           "label": u.label_name, "group": u.speaker} for u in c.utterances]
  return str(base), rows


def _write_csv(path, rows, fields=("audio", "text", "label", "group")):
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
  return str(path)


def _write_jsonl(path, rows):
  with open(path, "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
  return str(path)


def _config(manifest, variant="smoke", **data):
  c = manifest_config.get_config(variant)
  c.data.data_dir = manifest
  c.data.max_seconds = 0.5
  c.data.num_groups = 3
  c.data.max_folds = 0
  for k, v in data.items():
    c.data[k] = v
  return c


def test_csv_and_jsonl_load_the_corpus(corpus, tmp_path):
  base, rows = corpus
  csv_ds = plans.manifest_dataset(
      _config(_write_csv(os.path.join(base, "m.csv"), rows)), str(tmp_path / "w1"))
  json_ds = plans.manifest_dataset(
      _config(_write_jsonl(os.path.join(base, "m.jsonl"), rows)), str(tmp_path / "w2"))
  want = np.array([CLASSES.index(r["label"]) for r in rows])
  for ds in (csv_ds, json_ds):
    assert ds.class_names == CLASSES  # sorted distinct labels
    np.testing.assert_array_equal(ds.labels, want)
    assert ds.summary.total_skipped == 0
    # DMF inputs: normalised audio of the first 0.5 s; check the raw wave independently.
    assert ds.inputs["input_values"].shape == (len(rows), 8000)
  # Audio: the loader's model input equals soundfile's decoding after the same normalisation.
  wave, sr = sf.read(os.path.join(base, rows[0]["audio"]), dtype="float32")
  assert sr == 16000
  w = wave[:8000]
  norm = (w - w.mean()) / np.sqrt(w.var() + 1e-7)
  np.testing.assert_allclose(csv_ds.inputs["input_values"][0, :w.size], norm, atol=1e-4)
  for k in csv_ds.inputs:
    np.testing.assert_array_equal(csv_ds.inputs[k], json_ds.inputs[k])
  # Grouped folds: 3 folds, test sets partition the rows, no speaker on both sides.
  groups = np.array([r["group"] for r in rows])
  assert len(csv_ds.folds) == 3
  tests = np.sort(np.concatenate([f.test for f in csv_ds.folds]))
  np.testing.assert_array_equal(tests, np.arange(len(rows)))
  for f in csv_ds.folds:
    train_groups = set(groups[np.concatenate([f.train, f.val])])
    assert not train_groups & set(groups[f.test])
    assert len(f.val) == round(0.1 * (len(f.train) + len(f.val)))


def test_class_names_order_and_unknown_labels_are_skipped(corpus, tmp_path):
  base, rows = corpus
  path = _write_csv(os.path.join(base, "order.csv"), rows)
  c = _config(path, class_names="sad,neu,hap")  # 'ang' rows are unknown → skipped
  c.model.num_classes = 3
  ds = plans.manifest_dataset(c, str(tmp_path))
  kept = [r for r in rows if r["label"] != "ang"]
  np.testing.assert_array_equal(ds.labels, [("sad", "neu", "hap").index(r["label"])
                                            for r in kept])
  assert ds.summary.counts[manifest.REASON_UNKNOWN_LABEL] == len(rows) - len(kept)


def test_bad_rows_are_counted_and_strict_raises(corpus, tmp_path):
  base, rows = corpus
  bad = [dict(rows[0], audio="no/such/file.wav"), dict(rows[1], group=""),
         {k: v for k, v in rows[2].items() if k != "text"}]
  path = _write_jsonl(os.path.join(base, "bad.jsonl"), bad + rows[3:])
  with open(path, "a") as f:
    f.write("not json\n")
  ds = plans.manifest_dataset(_config(path), str(tmp_path))
  assert len(ds.labels) == len(rows) - 3
  s = ds.summary
  assert s.counts[manifest.REASON_MISSING_FIELD] == 2
  assert s.counts[manifest.REASON_BAD_LINE] == 1
  assert sum(n for r, n in s.counts.items() if "file" in r or "unreadable" in r) >= 1, s.format()
  assert s.total_skipped == 4
  with pytest.raises(DataError, match="missing field|no such file|unreadable|not a JSON"):
    manifest.load_manifest(path, (), _strict_summary())


def test_duplicate_rows_are_kept_once_and_counted_conflicts_are_errors(corpus, tmp_path):
  """A repeated row would land in training and validation (a leak): kept once, counted; the same
  audio with another label or group is refused, naming the lines."""
  base, rows = corpus
  path = _write_csv(os.path.join(base, "dups.csv"), rows + [rows[0], dict(rows[1], text="x")])
  paths, _, labels, _, _ = manifest.load_manifest(path, (), LoadSummary(name="m"))
  assert len(paths) == len(set(paths)) == len(rows)
  s = LoadSummary(name="m")
  manifest.load_manifest(path, (), s)
  assert s.counts[manifest.REASON_DUPLICATE] == 2
  assert f"{path}:{len(rows) + 2} (= line 2)" in s.examples[manifest.REASON_DUPLICATE]
  other = "sad" if rows[0]["label"] != "sad" else "ang"
  path = _write_csv(os.path.join(base, "conflict.csv"),
                    rows + [dict(rows[0], label=other), dict(rows[1], group="elsewhere")])
  with pytest.raises(UserError, match=rf"2 row\(s\) repeat an audio file .*line {len(rows) + 2} "
                     rf"repeats the audio of line 2 with another label"):
    manifest.load_manifest(path, (), LoadSummary(name="m"))
  with pytest.raises(DataError, match="duplicate of an earlier row"):
    manifest.load_manifest(os.path.join(base, "dups.csv"), (), _strict_summary())


def test_read_manifest_rows_with_lines_bom_and_alternative_columns(tmp_path):
  """The one reader: a TSV with a byte order mark and upper-case names, a column read under
  either of two names, paths resolved against the manifest's folder, a bad row kept with its
  line and reason (and counted by a summary)."""
  p = tmp_path / "m.tsv"
  p.write_bytes("\ufeffAudio\tText\textra\n a/b.wav \t hi \tz\n\tx\tz\n".encode("utf-8"))
  s = LoadSummary(name="m")
  rows = manifest.read_manifest(str(p), [("wav", "audio"), "text"], may_be_empty=("text",),
                                path_columns=("wav",), summary=s)
  assert rows == [manifest.Row(2, {"wav": str(tmp_path / "a" / "b.wav"), "text": " hi "}),
                  manifest.Row(3, {"wav": "", "text": "x"}, "empty 'audio' column")]
  assert s.counts[manifest.REASON_MISSING_FIELD] == 1 and f"{p}:3" in s.examples[
      manifest.REASON_MISSING_FIELD][0]
  with pytest.raises(UserError, match=r"has no column\(s\) \['label'\] \(found \['audio', "):
    manifest.read_manifest(str(p), ["audio", "label"])
  with pytest.raises(UserError, match=r"cannot be read"):
    manifest.read_manifest(str(tmp_path / "absent.jsonl"), ["audio"])


def _strict_summary():
  return LoadSummary(name="manifest", strict=True)


def test_user_errors(corpus, tmp_path):
  base, rows = corpus
  with pytest.raises(UserError, match=r"no column\(s\) \['group'\]"):
    plans.manifest_dataset(
        _config(_write_csv(os.path.join(base, "nogroup.csv"), rows, ("audio", "text", "label"))),
        str(tmp_path))
  with pytest.raises(UserError, match="does not exist"):
    plans.manifest_dataset(_config(os.path.join(base, "absent.csv")), str(tmp_path))
  with pytest.raises(UserError, match="data_dir is empty"):
    plans.manifest_dataset(_config(""), str(tmp_path))
  with pytest.raises(UserError, match="extension"):
    open(os.path.join(base, "m.txt"), "w").close()
    plans.manifest_dataset(_config(os.path.join(base, "m.txt")), str(tmp_path))
  path = _write_csv(os.path.join(base, "ok.csv"), rows)
  c = _config(path)
  c.model.num_classes = 3
  with pytest.raises(UserError, match="num_classes=4"):
    plans.manifest_dataset(c, str(tmp_path))
  with pytest.raises(UserError, match="num_groups=99"):
    plans.manifest_dataset(_config(path, num_groups=99), str(tmp_path))
  with pytest.raises(UserError, match="protocol"):
    plans.manifest_dataset(_config(path, protocol="loso"), str(tmp_path))


def test_configs():
  c = manifest_config.get_config(None)
  assert (c.name, c.fusions, c.model.name, c.data.dataset) == ("manifest_dmf", "dmf", "dmf",
                                                               "manifest")
  c = manifest_config.get_config("mbaf,both")
  assert (c.fusions, c.model.name, c.optim.name) == ("mbaf,naive", "mbaf_iemocap", "adam")
  assert manifest_config.get_config("demo").model.fusion.dmf.slots == 16  # shrink_for_demo
  with pytest.raises(ValueError, match="unknown config variant"):
    manifest_config.get_config("cebs")


def test_mbaf_inputs(corpus, tmp_path):
  """The MBAF variant gets raw waves (first 0.5 s, as decoded by soundfile) and token ids."""
  base, rows = corpus
  ds = plans.manifest_dataset(
      _config(_write_csv(os.path.join(base, "mb.csv"), rows), "mbaf,smoke"), str(tmp_path))
  assert ds.inputs["waves"].shape == (len(rows), 8000)
  for i in (0, 7):
    wave, _ = sf.read(os.path.join(base, rows[i]["audio"]), dtype="float32")
    n = min(wave.size, 8000)
    assert ds.inputs["lengths"][i] == n
    np.testing.assert_allclose(ds.inputs["waves"][i, :n], wave[:n], atol=1e-6)
  assert ds.inputs["token_ids"].shape[0] == len(rows) and ds.vocab_size > 10


@pytest.mark.slow
def test_smoke_training_run(corpus, tmp_path, variant="mbaf,smoke"):
  """train.main on a manifest, no code changes: metrics for the grouped fold (MBAF smoke: the
  cheaper model; the DMF inputs are checked in test_csv_and_jsonl_load_the_corpus)."""
  base, rows = corpus
  c = _config(_write_csv(os.path.join(base, "train.csv"), rows), variant, num_groups=2,
              max_folds=1)
  c.train.num_devices = 1
  assert main_lib.run(c, str(tmp_path)) == 0
  with open(tmp_path / "metrics.json") as f:
    m = json.load(f)
  kind = c.fusions
  fold = m["fusions"][kind]["folds"]["group0"]
  assert sum(map(sum, fold["confusion"])) == fold["count"] == fold["sizes"]["test"]
  assert 0.0 <= fold["wa"] <= 1.0 and fold["steps"] == 3
