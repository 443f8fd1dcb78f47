"""Synthetic corpora written in the real on-disk formats, for tests and the demo.

Usage::

    python -m mbaf_jax.data.synthetic iemocap --out /tmp/syn --size demo --seed 0
    python -m mbaf_jax.data.synthetic cebs --out /tmp/syn --seed 0

IEMOCAP (:func:`write_iemocap`) writes ``<out>/IEMOCAP_full_release`` exactly as
DATA_FORMATS "IEMOCAP" describes the release: 16 kHz mono 16-bit PCM sentence
wavs, transcription lines ``ID [SSS.SSSS-EEE.EEEE]: text`` and EmoEvaluation
files with TAB-separated summary lines (4-decimal times, VAD triple) followed by
``C-`` (some with several categories) and ``A-`` lines (two spaces before the
dom value, one dom value missing), plus every quirk: transcript noise lines
(``M: sorry``), ``XX`` ids with neither label nor wav, bracketed non-speech
tokens, the irregular dialog names ``Ses03M_impro05a/05b/08a/08b`` and
``Ses05M_script01_1b``, hidden files (``.DS_Store``, ``._*.wav``) and non-wav
files under ``sentences/wav``, a dotfile and evaluator subfolders in
``EmoEvaluation``, the non-4-class labels (xxx, fru, sur, fea, oth, dis), and
speakers whose letter after the last underscore differs from the dialog prefix.

Learnable cross-modal structure. Each 4-class utterance of true class ``c``
(classes balanced within every speaker) *expresses* its class in the audio with
probability ``p_audio`` and, independently, in the text with probability
``p_text``; otherwise the audio sounds neutral and the text is plain:

* audio: a voiced synthetic signal (harmonics of a pitch contour under a
  syllable-rate envelope, plus noise). The expressed style sets pitch (× the
  speaker's base f0: F ≈ 200 Hz, M ≈ 115 Hz, each speaker ±10 %), loudness,
  syllable rate, brightness (harmonic roll-off) and contour (rising for hap,
  falling for sad): ang loud/fast/bright, hap high/rising, neu medium/flat, sad
  quiet/slow/dark. Every parameter is jittered per utterance and per speaker.
* text: a plain carrier sentence of filler words; when expressed, one or two
  class words are inserted (ang "furious", hap "wonderful", neu "fine",
  sad "lonely", ...). An unexpressed text is plain: it says nothing about the
  class. Bracketed non-speech tokens are added at random.

With balanced classes and perfectly recognisable styles the Bayes-optimal
accuracies are: audio alone ``1/4 + 3/4 p_audio`` (a neutral-sounding clip is
neu or an unexpressed other class; predict neu), text alone
``p_text + (1 - p_text) / 4 = 1/4 + 3/4 p_text`` (a plain text is a uniform
guess), both ``1/4 + 3/4 (1 - (1 - p_audio)(1 - p_text))`` (wrong only for a
non-neutral class expressed in neither mode, predicted neu). The defaults
p_audio = p_text = 0.8 give 0.85, 0.85 and 0.97 (0.6 would give 0.70, 0.70,
0.88): strong enough that the demo's tiny encoders, trained from random init
for a few hundred steps, learn both modes. Non-4-class utterances get a random
style. Everything is deterministic given ``seed``.

``write_cebs`` runs the CEBS writer of :mod:`mbaf_jax.data.synthetic_cebs`
the same way. Both write into a temporary sibling folder and rename it into
place with a completion marker (:data:`MARKER`); :func:`is_complete` and
:func:`is_partial` tell a finished corpus from one whose write was killed.
"""
import argparse
import json
import math
import os
import shutil
import socket
import sys
import warnings

import numpy as np

from mbaf_jax.data import synthetic_cebs
from mbaf_jax.data.iemocap import CLASSES
from mbaf_jax.data.report import DataError

# Completion marker written last into a synthetic corpus root (JSON: the writer's arguments).
MARKER = "synthetic_complete.json"
IEMOCAP_ROOT = "IEMOCAP_full_release"  # folder write_iemocap writes under out_dir
IEMOCAP_MANIFEST = "iemocap_synthetic_manifest.json"  # manifest beside it
IEMOCAP_README = "Synthetic IEMOCAP-format corpus written by mbaf_jax.data.synthetic (not real speech).\n"
CEBS_ROOT = "cebsdb"  # folder write_cebs writes under out_dir

# size name -> 4-class utterances per session (split evenly over the 2 speakers and 4 classes).
SIZES = {"tiny": 16, "demo": 64, "small": 200}
# Audio style per expressed class: (pitch factor, loudness, syllables/s, harmonic roll-off, contour slope).
AUDIO_STYLES = {
    0: (1.30, 0.60, 6.0, 0.85, 0.00),    # ang: loud, fast, bright
    1: (1.60, 0.30, 4.5, 0.70, 0.30),    # hap: high, rising
    2: (1.00, 0.15, 3.5, 0.60, 0.00),    # neu: medium, flat
    3: (0.80, 0.06, 2.0, 0.40, -0.25),   # sad: quiet, slow, dark, falling
}
EMOTION_WORDS = {
    0: ("furious", "angry", "hate", "ridiculous", "unacceptable", "shut"),
    1: ("wonderful", "great", "love", "amazing", "excited", "fantastic"),
    2: ("fine", "alright", "calm", "usual", "normal", "sure"),
    3: ("sorry", "miss", "lonely", "cried", "hopeless", "lost"),
}
OPENERS = ("well", "so", "okay", "look", "and", "but", "i", "you")
NEUTRAL_WORDS = ("forms", "table", "tuesday", "office", "paper", "line", "window", "number", "car",
                 "letter", "the", "that", "about", "this", "with", "going", "there", "have")
NONSPEECH = ("[LAUGHTER]", "[BREATHING]", "[GARBAGE]", "[garbage]", "[LIPSMACK]")
EXCLUDED_CYCLE = ("xxx", "fru", "sur", "xxx", "fea", "fru", "oth", "dis")
CATEGORY_NAMES = {"ang": "Anger", "hap": "Happiness", "exc": "Excited", "neu": "Neutral",
                  "sad": "Sadness", "fru": "Frustration", "sur": "Surprise", "fea": "Fear",
                  "oth": "Other", "dis": "Disgust"}
VAD_CENTRES = {"ang": (2.0, 4.0, 4.0), "hap": (4.0, 3.5, 3.0), "exc": (4.0, 4.0, 3.0),
               "neu": (3.0, 2.5, 2.5), "sad": (2.0, 2.0, 2.0), "fru": (2.0, 3.5, 3.0),
               "sur": (3.5, 4.0, 3.0), "fea": (2.0, 3.5, 2.0), "oth": (3.0, 3.0, 3.0),
               "dis": (2.0, 3.0, 3.5), "xxx": (2.5, 3.0, 3.0)}


def _per_session(size) -> int:
  if isinstance(size, str) and size.isdigit():
    size = int(size)
  if isinstance(size, str):
    if size not in SIZES:
      raise ValueError(f"write_iemocap: size must be one of {sorted(SIZES)} or an int >= 8 (4-class "
                       f"utterances per session), got {size!r}")
    return SIZES[size]
  if int(size) < 8:
    raise ValueError(f"write_iemocap: an int size is the number of 4-class utterances per session and must "
                     f"be >= 8 (every speaker needs all 4 classes), got {size}")
  return int(size)


def _dialog_names(session: int, n: int) -> list:
  """``n`` dialog names of a session, irregular ones first (DATA_FORMATS "IEMOCAP")."""
  s = f"Ses0{session}"
  names = {3: ["Ses03M_impro05a", "Ses03M_impro05b", "Ses03F_impro01", "Ses03M_impro08a",
               "Ses03M_impro08b"],
           5: ["Ses05M_script01_1b", "Ses05F_impro01"]}.get(session, [f"{s}F_impro01"])
  k = 1
  while len(names) < n:
    prefix = "FM"[k % 2]
    if k > 60:  # the release's name patterns are exhausted: number further improvisations
      cand = f"{s}{prefix}_impro{k:03d}"
    elif k % 3:
      cand = f"{s}{prefix}_script0{(k // 2) % 3 + 1}_{k % 3 + 1}"
    else:
      cand = f"{s}{prefix}_impro0{k % 7 + 2}"
    if cand not in names:
      names.append(cand)
    k += 1
  return names[:n]


def synth_voice(rng, n: int, sr: int, base_f0: float, loud_scale: float, style: int) -> np.ndarray:
  """A voiced synthetic signal in the given class style (see the module docstring).

  Args:
    rng: numpy Generator.
    n: number of samples.
    sr: sampling rate.
    base_f0: the speaker's base pitch (Hz).
    loud_scale: the speaker's loudness factor.
    style: class index into AUDIO_STYLES.

  Returns:
    (n,) float32 in [-1, 1].
  """
  pitch, loud, rate, rolloff, slope = AUDIO_STYLES[style]
  f0 = base_f0 * pitch * (1 + 0.05 * rng.standard_normal())
  loud = loud * loud_scale * math.exp(0.15 * rng.standard_normal())
  rate = rate * (1 + 0.1 * rng.standard_normal())
  t = np.arange(n) / sr
  dur = max(n / sr, 1e-3)
  f0_t = f0 * (1 + slope * (t / dur - 0.5)) * (1 + 0.03 * np.sin(2 * np.pi * 5.0 * t))
  phase = 2 * np.pi * np.cumsum(f0_t) / sr
  sig = np.zeros(n)
  amp_sum = 0.0
  for h in range(1, 9):
    if h * f0 * 1.3 >= sr / 2:
      break
    a = rolloff ** (h - 1)
    sig += a * np.sin(h * phase)
    amp_sum += a
  env = 0.25 + 0.75 * np.sin(np.pi * rate * t + rng.uniform(0, np.pi)) ** 2
  sig = loud * env * sig / amp_sum + 0.005 * rng.standard_normal(n)
  return np.clip(sig, -0.99, 0.99).astype(np.float32)


def synth_text(rng, style: int, expressed: bool) -> str:
  """A plain carrier sentence, with one or two class words when ``expressed``."""
  words = [str(rng.choice(OPENERS))] + [str(w) for w in rng.choice(NEUTRAL_WORDS, size=rng.integers(3, 7))]
  if expressed:
    for w in rng.choice(EMOTION_WORDS[style], size=rng.integers(1, 3), replace=False):
      words.insert(int(rng.integers(1, len(words) + 1)), str(w))
  text = " ".join(words)
  text = text[0].upper() + text[1:] + str(rng.choice([".", "?", "!"]))
  r = rng.uniform()
  if r < 0.1:
    text = f"{rng.choice(NONSPEECH)} {text}"
  elif r < 0.2:
    text = f"{text} {rng.choice(NONSPEECH)}"
  return text


def _vad(rng, label):
  raters = rng.integers(2, 4)
  centre = np.asarray(VAD_CENTRES[label])
  ratings = np.clip(np.round(centre[None] + rng.normal(0, 0.7, size=(raters, 3))), 1, 5)
  return ratings.mean(axis=0)


def _evaluator_lines(rng, label, vad):
  """The C- and A- lines of one turn (multi-category, two spaces before dom, a missing dom)."""
  cats = list(CATEGORY_NAMES.values())
  lines = []
  for ev in ("C-E1", "C-E2", "C-F1"):
    if label == "xxx":
      names = list(rng.choice(cats, size=rng.integers(1, 3), replace=False))
    else:
      names = [CATEGORY_NAMES[label]]
      if rng.uniform() < 0.25:
        names.append(str(rng.choice([c for c in cats if c != names[0]])))
    note = str(rng.choice(["()", "()", "(curious)", "(irritated)"]))
    lines.append(f"{ev}:\t" + " ".join(f"{c};" for c in names) + f"\t{note}")
  for ev in ("A-E1", "A-F1"):
    v, a, d = (int(np.clip(round(x + rng.normal(0, 0.5)), 1, 5)) for x in vad)
    dom = "" if rng.uniform() < 0.05 else str(d)
    lines.append(f"A-{ev[2:]}:\tval {v}; act {a}; dom  {dom};\t()")
  return lines


def _write_wav(path, wave, sr):
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  sf.write(path, wave, sr, subtype="PCM_16")


def write_iemocap(out_dir, size="small", seed: int = 0, sample_rate: int = 16000, seconds=(0.5, 1.5),
                  p_audio: float = 0.8, p_text: float = 0.8, return_manifest: bool = False):
  """Writes a synthetic ``IEMOCAP_full_release`` (layout and quirks of the real one).

  The corpus is written into a temporary sibling folder and renamed into place
  with a completion marker (:data:`MARKER`, holding these arguments) inside.
  A complete corpus written with the same arguments is reused as it is (not
  rewritten); a partial one (no marker: a write that was killed) or one
  written with other arguments is regenerated, with one warning.

  Args:
    out_dir: directory to write into (created); the corpus goes to
      ``<out_dir>/IEMOCAP_full_release`` and the manifest to
      ``<out_dir>/iemocap_synthetic_manifest.json``.
    size: "tiny" (16 4-class utterances per session), "demo" (64), "small"
      (200) or an int >= 8: 4-class utterances per session, balanced over the
      two speakers and four classes; about a fifth more non-4-class turns.
    seed: all randomness derives from it.
    sample_rate: wav sampling rate (the release uses 16000).
    seconds: (min, max) clip duration in seconds.
    p_audio: probability that a turn's class shows in its audio (Bayes accuracy from audio
      alone: 1/4 + 3/4 p_audio).
    p_text: probability that it shows in its text (likewise).
    return_manifest: also return the manifest dict.

  Returns:
    The root path (str); with ``return_manifest`` ``(root, manifest)`` where
    ``manifest["utterances"]`` lists every labelled turn (id, raw label,
    4-class label or None, session, speaker, text, start, end, audio/text
    expression flags) and ``manifest["class_counts"]`` / ``["excluded"]`` /
    ``["xx_ids"]`` / ``["noise_lines"]`` the totals a loader should find.

  Raises:
    ValueError: a bad argument.
    DataError: ``<out_dir>/IEMOCAP_full_release`` exists and is not a
      synthetic corpus (it is never overwritten).
  """
  _per_session(size)  # validates size
  lo, hi = (float(x) for x in seconds)
  if not 0 < lo <= hi:
    raise ValueError(f"write_iemocap: seconds must be (min, max) with 0 < min <= max, got {seconds}")
  for name, p in (("p_audio", p_audio), ("p_text", p_text)):
    if not 0 <= p <= 1:
      raise ValueError(f"write_iemocap: {name} must be a probability in [0, 1], got {p}")
  params = {"dataset": "iemocap", "size": size, "seed": seed, "sample_rate": sample_rate,
            "seconds": [lo, hi], "p_audio": p_audio, "p_text": p_text}

  def write(tmp_out):
    return _write_iemocap_tree(tmp_out, size, seed, sample_rate, (lo, hi), p_audio, p_text)

  root, manifest = write_atomically(out_dir, IEMOCAP_ROOT, IEMOCAP_MANIFEST, params, write)
  return (root, manifest) if return_manifest else root


def _write_iemocap_tree(out_dir, size, seed, sample_rate, seconds, p_audio, p_text):
  """Writes ``<out_dir>/IEMOCAP_full_release`` and its manifest (see :func:`write_iemocap`).

  Returns:
    The manifest dict.
  """
  n_session = _per_session(size)
  lo, hi = seconds
  rng = np.random.default_rng(seed)
  root = os.path.join(os.path.abspath(os.fspath(out_dir)), IEMOCAP_ROOT)
  os.makedirs(os.path.join(root, "Documentation"), exist_ok=True)
  with open(os.path.join(root, "README.txt"), "w") as f:
    f.write(IEMOCAP_README)
  with open(os.path.join(root, "Documentation", "synthetic.txt"), "w") as f:
    f.write(f"seed={seed} size={size} p_audio={p_audio} p_text={p_text}\n")
  manifest = {"seed": seed, "size": size, "p_audio": p_audio, "p_text": p_text, "utterances": [],
              "xx_ids": 0, "noise_lines": 0}
  excl_i = 0
  for session in range(1, 6):
    sdir = os.path.join(root, f"Session{session}")
    emo_dir = os.path.join(sdir, "dialog", "EmoEvaluation")
    tr_dir = os.path.join(sdir, "dialog", "transcriptions")
    for d in (emo_dir, tr_dir, os.path.join(sdir, "sentences", "wav")):
      os.makedirs(d, exist_ok=True)
    for sub in ("Attribute", "Categorical", "Self-evaluation"):
      os.makedirs(os.path.join(emo_dir, sub), exist_ok=True)
    speakers = {}
    for g, base in (("F", 200.0), ("M", 115.0)):
      speakers[g] = (base * (1 + rng.uniform(-0.1, 0.1)), 1 + rng.uniform(-0.15, 0.15))
    # Labelled turns of this session: (speaker letter, raw label, true style class or None).
    turns = []
    for i, g in enumerate("FM"):
      n_spk = n_session // 2 + (n_session % 2 if g == "F" else 0)
      classes = np.tile(np.arange(4), n_spk // 4 + 1)[:n_spk]
      hap_i = 0
      for c in rng.permutation(classes):
        raw = CLASSES[int(c)]
        if raw == "hap":
          raw = ("hap", "exc")[hap_i % 2]
          hap_i += 1
        turns.append((g, raw, int(c)))
    for j in range(max(2, n_session // 5)):
      turns.append(("FM"[j % 2], EXCLUDED_CYCLE[excl_i % len(EXCLUDED_CYCLE)], None))
      excl_i += 1
    order = rng.permutation(len(turns))
    n_dialogs = max(2, math.ceil(len(turns) / 24))
    dialogs = _dialog_names(session, n_dialogs)
    for di, dialog in enumerate(dialogs):
      dturns = [turns[k] for k in order[di::n_dialogs]]
      wav_dir = os.path.join(sdir, "sentences", "wav", dialog)
      os.makedirs(wav_dir, exist_ok=True)
      t = float(rng.uniform(1.0, 8.0))
      counters = {"F": 0, "M": 0}
      emo_blocks, tr_lines = [], []
      for g, raw, c in dturns:
        uid = f"{dialog}_{g}{counters[g]:03d}"
        counters[g] += 1
        n = int(round(rng.uniform(lo, hi) * sample_rate))
        start, end = t, t + n / sample_rate
        t = end + float(rng.uniform(0.2, 2.0))
        style = int(rng.integers(4)) if c is None else c
        exp_a = bool(rng.uniform() < p_audio)
        exp_t = bool(rng.uniform() < p_text)
        a_style = style if exp_a else 2
        base_f0, loud = speakers[g]
        _write_wav(os.path.join(wav_dir, uid + ".wav"),
                   synth_voice(rng, n, sample_rate, base_f0, loud, a_style), sample_rate)
        text = synth_text(rng, style, exp_t)
        vad = _vad(rng, raw)
        emo_blocks.append([f"[{start:.4f} - {end:.4f}]\t{uid}\t{raw}\t[{vad[0]:.4f}, {vad[1]:.4f}, {vad[2]:.4f}]"]
                          + _evaluator_lines(rng, raw, vad))
        tr_lines.append(f"{uid} [{start:08.4f}-{end:08.4f}]: {text}")
        manifest["utterances"].append({
            "id": uid, "dialog": dialog, "session": session, "speaker": f"Ses0{session}{g}",
            "raw_label": raw, "label": None if c is None else c,
            "label_name": None if c is None else CLASSES[c], "text": text, "start": round(start, 4),
            "end": round(end, 4), "audio_expressed": exp_a, "text_expressed": exp_t, "style": style})
      # Quirks: an XX id (no label, no wav) and a noise line in every transcription file.
      xx_t = float(rng.uniform(0.5, max(t, 1.0)))
      tr_lines.insert(int(rng.integers(len(tr_lines) + 1)),
                      f"{dialog}_{'MF'[di % 2]}XX0 [{xx_t:08.4f}-{xx_t + 0.5:08.4f}]: Hmm. [BREATHING]")
      tr_lines.insert(int(rng.integers(len(tr_lines) + 1)), str(rng.choice(["M: sorry", "F: [LAUGHTER]",
                                                                             "M: yeah."])))
      manifest["xx_ids"] += 1
      manifest["noise_lines"] += 1
      with open(os.path.join(tr_dir, dialog + ".txt"), "w") as f:
        f.write("\n".join(tr_lines) + "\n")
      with open(os.path.join(emo_dir, dialog + ".txt"), "w") as f:
        f.write("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n")
        for block in emo_blocks:
          f.write("\n".join(block) + "\n\n")
      with open(os.path.join(emo_dir, "Categorical", dialog + "_e1_cat.txt"), "w") as f:
        f.write(f"{dialog}_F000 :Neutral state; ()\n")
      with open(os.path.join(emo_dir, "._" + dialog + ".txt"), "wb") as f:
        f.write(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
      with open(os.path.join(wav_dir, "._" + dialog + "_F000.wav"), "wb") as f:
        f.write(b"\x00\x05\x16\x07\x00\x02\x00\x00")
      if di == 0:
        with open(os.path.join(wav_dir, ".DS_Store"), "wb") as f:
          f.write(b"\x00\x00\x00\x01Bud1")
        with open(os.path.join(wav_dir, dialog + ".pk"), "wb") as f:
          f.write(b"\x80\x04K\x00.")
  labelled = [u for u in manifest["utterances"] if u["label"] is not None]
  manifest["class_counts"] = {k: sum(u["label_name"] == k for u in labelled) for k in CLASSES}
  manifest["excluded"] = {}
  for u in manifest["utterances"]:
    if u["label"] is None:
      manifest["excluded"][u["raw_label"]] = manifest["excluded"].get(u["raw_label"], 0) + 1
  manifest["bayes_accuracy"] = {"audio": 0.25 + 0.75 * p_audio, "text": 0.25 + 0.75 * p_text,
                                "both": 0.25 + 0.75 * (1 - (1 - p_audio) * (1 - p_text))}
  with open(os.path.join(os.path.dirname(root), IEMOCAP_MANIFEST), "w") as f:
    json.dump(manifest, f, indent=1)
  return manifest


def is_complete(root) -> bool:
  """Whether a synthetic corpus was written to the end.

  Args:
    root: an ``IEMOCAP_full_release`` or ``cebsdb`` folder.

  Returns:
    True when ``root`` holds the completion marker :data:`MARKER`.
  """
  return os.path.isfile(os.path.join(os.fspath(root), MARKER))


def _marker_params(root):
  """The arguments stored in ``root``'s completion marker; None without a readable marker."""
  try:
    with open(os.path.join(root, MARKER)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _written_here(root) -> bool:
  """Whether ``root`` was written by this module (marker, synthetic README or CEBS manifest)."""
  if is_complete(root):
    return True
  try:
    with open(os.path.join(root, "README.txt")) as f:
      if f.read(len(IEMOCAP_README)) == IEMOCAP_README:
        return True
  except OSError:
    pass
  parent = os.path.dirname(os.path.normpath(root))
  return (os.path.basename(os.path.normpath(root)) == CEBS_ROOT
          and os.path.isfile(os.path.join(parent, synthetic_cebs.MANIFEST)))


def is_partial(root) -> bool:
  """Whether ``root`` is a synthetic corpus without its completion marker (its write was killed).

  Args:
    root: an ``IEMOCAP_full_release`` or ``cebsdb`` folder.

  Returns:
    True for a folder this module wrote (its README, or the CEBS manifest
    beside it) that lacks the marker; a real corpus is never partial.
  """
  root = os.fspath(root)
  return os.path.isdir(root) and not is_complete(root) and _written_here(root)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _remove_dead_partials(out_dir: str, name: str) -> None:
  """Removes the temporary folders of earlier writes on this host whose process has died."""
  prefix = f".{name}.partial-{socket.gethostname()}-"
  for entry in os.listdir(out_dir):
    if entry.startswith(prefix) and entry[len(prefix):].isdigit() and not _pid_alive(int(entry[len(prefix):])):
      shutil.rmtree(os.path.join(out_dir, entry), ignore_errors=True)


def write_atomically(out_dir, name: str, manifest_name: str, params: dict, write):
  """Writes ``<out_dir>/<name>`` through a temporary sibling folder, marked complete, renamed into place.

  Args:
    out_dir: the output directory (created).
    name: the corpus folder ``write`` creates under the directory it is given.
    manifest_name: the manifest file ``write`` puts beside that folder.
    params: the writer's arguments (JSON-serialisable), stored in the marker;
      a complete corpus with equal arguments is reused, not rewritten.
    write: ``write(tmp_dir)`` writes ``<tmp_dir>/<name>`` and
      ``<tmp_dir>/<manifest_name>``; its return value is returned as the manifest.

  Returns:
    ``(root, manifest)``: the corpus folder and ``write``'s return value, or
    the manifest read back from disk when an existing corpus is reused.

  Raises:
    DataError: ``out_dir`` is a file, or ``<out_dir>/<name>`` exists and was not
      written by this module (it is never overwritten).
  """
  out_dir = os.path.abspath(os.fspath(out_dir))
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise DataError(f"cannot write a synthetic corpus into {out_dir!r}: it is a file; pass a directory "
                    "(it is created when missing)")
  final = os.path.join(out_dir, name)
  params = json.loads(json.dumps(params))
  manifest_path = os.path.join(out_dir, manifest_name)
  if os.path.lexists(final):
    if _marker_params(final) == params and os.path.isfile(manifest_path):
      with open(manifest_path) as f:
        return final, json.load(f)
    if not os.path.isdir(final) or not _written_here(final):
      raise DataError(f"{final!r} exists and is not a synthetic corpus written by mbaf_jax.data.synthetic; "
                      "it is left untouched: pass another output directory, or remove it yourself")
    why = ("was written with other arguments" if is_complete(final) else
           "has no completion marker (its write was interrupted, or an older writer made it)")
    warnings.warn(f"synthetic corpus {final} {why}; regenerating it", stacklevel=3)
  os.makedirs(out_dir, exist_ok=True)
  _remove_dead_partials(out_dir, name)
  tmp = os.path.join(out_dir, f".{name}.partial-{socket.gethostname()}-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    manifest = write(tmp)
    with open(os.path.join(tmp, name, MARKER), "w") as f:
      json.dump(params, f, indent=1)
    if _marker_params(final) == params and os.path.isfile(manifest_path):
      return final, manifest  # an equal corpus was completed meanwhile (a concurrent writer): keep it
    os.replace(os.path.join(tmp, manifest_name), manifest_path)
    if os.path.lexists(final):
      os.rename(final, os.path.join(tmp, name + ".old"))
    os.rename(os.path.join(tmp, name), final)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return final, manifest


def write_cebs(out_dir, subjects: int = 20, seconds=None, seed: int = 0, size="small") -> str:
  """The synthetic CEBS corpus (:func:`mbaf_jax.data.synthetic_cebs.write_cebs`), written atomically.

  The records are written into a temporary sibling folder and renamed into
  place with a completion marker (:data:`MARKER`) inside; a complete corpus
  written with the same arguments is reused, a partial one (or one written
  with other arguments) is regenerated, with one warning.

  Args:
    out_dir: output directory (created); the records go to ``<out_dir>/cebsdb``.
    subjects: number of subjects, 1..20.
    seconds: seconds per basal and post-music record; overrides ``size``.
    seed: random seed.
    size: ``"tiny"``, ``"demo"``, ``"small"``, ``"full"`` or an int number of seconds.

  Returns:
    The ``cebsdb`` root path.

  Raises:
    ValueError: a bad argument.
    DataError: ``<out_dir>/cebsdb`` exists and is not a synthetic corpus.
  """
  params = {"dataset": "cebs", "subjects": subjects, "seconds": seconds, "seed": seed, "size": size}

  def write(tmp_out):
    synthetic_cebs.write_cebs(tmp_out, subjects=subjects, seconds=seconds, seed=seed, size=size)

  return write_atomically(out_dir, CEBS_ROOT, synthetic_cebs.MANIFEST, params, write)[0]


def main(argv=None) -> int:
  """``python -m mbaf_jax.data.synthetic {iemocap,cebs} --out DIR [--size S] [--seed N]``."""
  p = argparse.ArgumentParser(prog="python -m mbaf_jax.data.synthetic",
                              description="Write a synthetic corpus in a real data set's on-disk format.")
  p.add_argument("dataset", choices=("iemocap", "cebs"), help="which data set's format to write")
  p.add_argument("--out", required=True, help="output directory (created)")
  p.add_argument("--size", default=None,
                 help="iemocap: tiny|demo|small (16|64|200 4-class utterances per session) or an "
                      "int >= 8 of them (default small); cebs: tiny|demo|small|full (6|24|60|300 s "
                      "per basal / post-music record, music records twice as long) or an int "
                      "number of seconds in [2, 3600] (default small)")
  p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
  p.add_argument("--seconds", default=None,
                 help="iemocap: min,max clip seconds (default 0.5,1.5)")
  args = p.parse_args(argv)
  if args.dataset == "iemocap":
    kw = {}
    if args.seconds:
      try:
        kw["seconds"] = tuple(float(x) for x in args.seconds.split(","))
        assert len(kw["seconds"]) == 2
      except (ValueError, AssertionError):
        p.error(f"--seconds must be 'min,max' (e.g. 0.5,1.5), got {args.seconds!r}")
    writer = lambda: write_iemocap(args.out, size=args.size or "small", seed=args.seed, **kw)
  else:
    if args.seconds:
      p.error("--seconds applies to iemocap only")
    kw = {} if args.size is None else {"size": int(args.size) if args.size.isdigit() else args.size}
    writer = lambda: write_cebs(args.out, seed=args.seed, **kw)
  try:
    root = writer()
  except (ValueError, DataError) as e:
    p.error(str(e))
  except OSError as e:
    p.error(f"cannot write into {args.out!r}: {e.strerror or e} ({e.filename or args.out})")
  print(root)
  return 0


if __name__ == "__main__":
  sys.exit(main())
