"""This library vs PyTorch side by side, in one process, in interleaved rounds.

Rows (one JSON line each, ``benchmarks/common.py`` keys plus the comparison):

* ``vs_torch_dmf_train_step``: DualMemoryFusion train step (forward, similarity loss, backward,
  SGD update) at DMF's sizes (batch 32, n = 120, d = 768, D = 2048) against the PyTorch
  reference of ``benchmarks/torch_reference.py`` (same parameters, memory and count sketch) run
  eagerly and under ``torch.compile``. Issue 15 targets: ≥ 1.3× PyTorch eager, ≥ 1.0×
  torch.compile.
* ``vs_torch_mbaf_train_step``: MBAF train step (``mean(fused²)``, SGD) at bench_mbaf_layer's
  sizes (IEMOCAP l = 6,848, 30 slots, batch 64; CEBS l = 1,024, 20 slots, batch 32), for
  ``write="scan"`` (a Python loop over the batch in PyTorch) and ``"batched"``.
* ``vs_torch_{wav2vec2,bert}_{fwd,fwd_bwd}``: Wav2Vec2-base (5 s of 16 kHz audio) and BERT-base
  (30 tokens) against transformers' ``Wav2Vec2Model`` / ``BertModel``, random init, the *same*
  weights loaded into the Flax model (``hf_loading.convert_state_dict``, no key missing).
  ``fwd``: evaluation forward; ``fwd_bwd``: training forward (dropout, SpecAugment) + the
  gradient of ``Σ pooled²`` w.r.t. every parameter. Layerdrop is 0 on both sides so that every
  call runs every layer. Target: ≥ 1.2× PyTorch eager.
* ``vs_torch_wav2vec2_conv_fwd_bwd`` (``--only wav2vec2_conv``): Wav2Vec2's convolutional feature
  encoder alone, forward+backward (a profile of the full model's forward+backward).
* ``vs_torch_wav2vec2_posconv_{fwd,fwd_bwd}`` (``--only wav2vec2_posconv``): Wav2Vec2-base's
  positional convolution alone (grouped conv 768 → 768, K 128, 16 groups, at the frames of
  ``--seconds``), this library's default (``pos_conv_impl="auto"``) against XLA's own grouped
  convolution (``jax_xla``: ``ratio_jax_xla`` = its time / the default's) and transformers'
  module with the same weights.
* ``vs_torch_dmf_model_train_step_{dmf,naive}`` and ``vs_torch_dmf_model_infer_b1_{dmf,naive}``
  (``--only dmf_model``): the whole DMF model of ``configs/iemocap.py`` (Wav2Vec2-base + BERT-base
  with DMF §2.1's frozen parts, DualMemoryFusion or naive concatenation, head; 5 s / 30 tokens,
  batch ``--dmf-model-batch``) against its PyTorch twin of ``dmf_model_torch.py`` (transformers'
  encoders, ``torch_reference.py``'s DMF layer, same weights): one SGD step each (DMF §3
  learning rates), eager and ``torch.compile``; and the evaluation forward at batch 1. ``step0``
  holds both sides' step-0 loss with dropout off, same batch and Gumbel noise (they must agree),
  ``max_abs_dev_log_probs`` the batch-1 outputs' deviation.

Every record names the CPU (``cpu_model``, from ``/proc/cpuinfo``) and holds the 1-minute load
average before and after the row; ``quiet`` is false when either exceeds 1.5. The load average
includes the benchmark's own threads (a long row on 2 cores lifts it towards 2 by itself), so each
record also holds ``other_cpu_cores``: the CPU time other processes took during the row, in cores
(from ``/proc/stat`` less this process's own time; ≈ 0 when the machine was quiet). PyTorch's
OpenMP threads slow down far more than XLA's when other processes compete for the cores: compare
only rows where nothing else ran.

Each round times every implementation once (``--iters`` calls, their median), in the order
jax, torch eager, torch.compile, jax, ...; a record holds each implementation's median over the
rounds, the per-round ratios ``torch time / jax time`` (> 1: this library is faster), their
median and interquartile range, the machine's load average before and after, and
``max_abs_dev`` between the two implementations' outputs on the same inputs. A
``torch.compile`` that fails is recorded (``torch_compile_error``), not raised.

    python -m benchmarks.bench_vs_torch --quick               # tiny sizes: a smoke check
    python -m benchmarks.bench_vs_torch                        # full sizes (CPU: ~30 min)
    python -m benchmarks.bench_vs_torch --only dmf,bert --rounds 9
    python -m benchmarks.bench_vs_torch --only dmf_model,wav2vec2_posconv --wav2vec2-batch 4

Needs PyTorch (``pip install -e '.[bench]'``); float32 only.
"""
import dataclasses
import os
import platform
import statistics
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import bench_mbaf_layer, common
from mbaf_jax.encoders import Bert, BertConfig, Wav2Vec2, Wav2Vec2Config
from mbaf_jax.encoders import hf_loading
from mbaf_jax.encoders.wav2vec2 import (FeatureEncoder, PositionalConvEmbedding,
                                        feat_extract_output_lengths)
from mbaf_jax.fusion.dual_memory import DualMemoryFusion
from mbaf_jax.fusion.mbaf import MBAF
from mbaf_jax.ops import conv as conv_ops

ALL = ("dmf", "mbaf", "wav2vec2", "bert", "dmf_model", "wav2vec2_conv", "wav2vec2_posconv")
DEFAULT = ("dmf", "mbaf", "wav2vec2", "bert", "dmf_model")
TARGETS = {"dmf": {"torch_eager": 1.3, "torch_compile": 1.0},
           "wav2vec2": {"torch_eager": 1.2}, "bert": {"torch_eager": 1.2}}
MBAF_FULL = [("iemocap", (2048, 4800), 30, 64), ("cebs", (512, 512), 20, 32)]
MBAF_QUICK = [("quick", (16, 16), 4, 8)]


# ----------------------------------------------------------------------------- timing


def _torch():
  import torch  # pylint: disable=g-import-not-at-top
  return torch


def _sync(device: str) -> None:
  if device == "cuda":
    _torch().cuda.synchronize()


def interleave(fns: dict, rounds: int, iters: int) -> dict:
  """Times each callable once per round, in the dict's order, for ``rounds`` rounds.

  Args:
    fns: name -> zero-argument callable that returns when its work is done.
    rounds: number of rounds.
    iters: calls per implementation per round (their median is the round's time).

  Returns:
    name -> list of per-round times in ms.
  """
  out = {k: [] for k in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      times = []
      for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
      out[name].append(statistics.median(times))
  return out


def _quartiles(values):
  if len(values) < 2:
    return values[0], values[0]
  q = statistics.quantiles(values, n=4, method="inclusive")
  return q[0], q[2]


def summarize(times: dict, errors: dict, first_call_s: dict, group: str) -> dict:
  """Medians, per-round ratios ``torch / jax`` and their spread, and the targets.

  Args:
    times: implementation -> per-round ms (``"jax"`` is the reference).
    errors: implementation -> error message of one that could not run.
    first_call_s: implementation -> seconds of its first call (compilation, when it compiles).
    group: ``"dmf"``, ``"mbaf"``, ``"wav2vec2"`` or ``"bert"`` (selects the targets).

  Returns:
    The comparison fields of a record.
  """
  jax_ms = times["jax"]
  rec = {"jax_median_ms": round(statistics.median(jax_ms), 4), "rounds": len(jax_ms),
         "jax_round_ms": [round(t, 3) for t in jax_ms], "first_call_s": first_call_s}
  for name, ms in times.items():
    if name == "jax":
      continue
    ratios = [t / j for t, j in zip(ms, jax_ms)]
    q1, q3 = _quartiles(ratios)
    rec[f"{name}_median_ms"] = round(statistics.median(ms), 4)
    rec[f"{name}_round_ms"] = [round(t, 3) for t in ms]
    rec[f"ratio_{name}"] = round(statistics.median(ratios), 4)
    rec[f"ratio_{name}_q1"], rec[f"ratio_{name}_q3"] = round(q1, 4), round(q3, 4)
    rec[f"ratio_{name}_iqr"] = round(q3 - q1, 4)
    rec[f"ratio_of_medians_{name}"] = round(statistics.median(ms) / statistics.median(jax_ms), 4)
    # Minima: each implementation's least-disturbed round (under load, the fairest pair).
    rec[f"ratio_of_minima_{name}"] = round(min(ms) / min(jax_ms), 4)
    target = TARGETS.get(group, {}).get(name)
    if target is not None:
      rec[f"target_{name}"] = target
      rec[f"meets_target_{name}"] = bool(statistics.median(ratios) >= target)
  for name, err in errors.items():
    rec[f"{name}_error"] = err
    target = TARGETS.get(group, {}).get(name)
    if target is not None:
      rec[f"target_{name}"] = target
      rec[f"meets_target_{name}"] = None
  return rec


QUIET_LOAD = 1.5  # a row whose 1-minute load average exceeds this, before or after, is not quiet


def cpu_model() -> str:
  """The CPU's ``model name`` from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def is_quiet(load_before: float, load_after: float, limit: float = QUIET_LOAD) -> bool:
  """Whether a row ran on a quiet machine: both 1-minute load averages at most ``limit``.

  The load average counts the benchmark's own busy threads too: a row that keeps both cores of a
  2-core machine busy for a minute pushes it towards 2 by itself. ``other_cpu_cores``
  (:func:`cpu_sample`) says how much CPU *other* processes took meanwhile.
  """
  return max(load_before, load_after) <= limit


def cpu_sample() -> tuple[float, float, float]:
  """``(wall s, busy CPU s of the whole machine, CPU s of this process and its children)``.

  Two samples give ``other_cpu_cores`` = (machine busy − own) / wall: the cores other processes
  kept busy in between (0 on a quiet machine). The machine's share is read from ``/proc/stat``
  (user, nice, system, irq, softirq, steal); elsewhere it is taken as this process's own.
  """
  t = os.times()
  own = t.user + t.system + t.children_user + t.children_system
  busy = own
  try:
    with open("/proc/stat", encoding="utf-8") as f:
      fields = [int(v) for v in f.readline().split()[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    busy = (fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]) / hz
  except (OSError, ValueError, IndexError):
    pass
  return time.perf_counter(), busy, own


def other_cpu_cores(before: tuple, after: tuple) -> float:
  """Cores kept busy by other processes between two :func:`cpu_sample` samples."""
  wall = after[0] - before[0]
  if wall <= 0:
    return 0.0
  return round(max(0.0, (after[1] - before[1]) - (after[2] - before[2])) / wall, 3)


def _first_line(e: BaseException) -> str:
  text = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
  return f"{type(e).__name__}: {text}"[:400]


def run_comparison(bench: str, group: str, impls: dict, timing: tuple, shape: dict,
                   extra: dict) -> dict:
  """Warms every implementation up (first call = compile), then times them interleaved.

  Args:
    bench: record name.
    group: target group (see :func:`summarize`).
    impls: name -> zero-argument callable, ``"jax"`` first; a callable that raises on its first
      call is dropped and its error recorded.
    timing: ``(rounds, iters per round, warmup calls after the first)``.
    shape: sizes for the record.
    extra: more keys for the record.

  Returns:
    The record.
  """
  rounds, iters, warmup = timing
  load0 = os.getloadavg()
  cpu0 = cpu_sample()
  errors, first_call_s, ok = {}, {}, {}
  for name, fn in impls.items():
    t0 = time.perf_counter()
    try:
      fn()
    except Exception as e:  # pylint: disable=broad-except
      if name == "jax":
        raise
      errors[name] = _first_line(e)
      continue
    first_call_s[name] = round(time.perf_counter() - t0, 3)
    for _ in range(warmup):
      fn()
    ok[name] = fn
  times = interleave(ok, rounds, iters)
  rec = {"bench": bench, "device": common.device_name(), "cpu_model": cpu_model(),
         "shape": shape, "dtype": "float32", "iters_per_round": iters}
  rec.update(summarize(times, errors, first_call_s, group))
  jax_ms = rec["jax_median_ms"]
  items = shape.get("batch", 1)
  load1 = os.getloadavg()
  rec.update({"median_ms": jax_ms, "throughput": round(items / (jax_ms * 1e-3), 2),
              "throughput_unit": "samples/s", "peak_mem_mb": round(common.peak_mem_mb(), 1),
              "loadavg_before": [round(v, 2) for v in load0],
              "loadavg_after": [round(v, 2) for v in load1],
              "quiet": is_quiet(load0[0], load1[0]),
              "other_cpu_cores": other_cpu_cores(cpu0, cpu_sample())})
  torch = _torch()
  rec.update({"torch_version": torch.__version__, "torch_threads": torch.get_num_threads()})
  rec.update(extra)
  return rec


# ----------------------------------------------------------------------------- fusion layers


def dmf_rows(args, device):
  """The DMF layer train step: JAX vs the PyTorch reference, eager and compiled."""
  torch = _torch()
  from benchmarks import torch_reference as tr  # pylint: disable=g-import-not-at-top
  b, n, d, dim, cfg = 32, 120, 768, 2048, {}
  if args.quick:
    b, n, d, dim = 4, 8, 32, 64
    cfg = dict(attention_tokens=4, num_heads=2, writer_ff_dim=64)
  layer = DualMemoryFusion(slots=n, cbp_dim=dim, **cfg)
  ka, kt, kw, kl = jax.random.split(jax.random.key(0), 4)
  x_a = jax.random.normal(ka, (b, d), jnp.float32)
  x_t = jax.random.normal(kt, (b, d), jnp.float32)
  labels = jax.random.randint(kl, (b,), 0, 4)
  mask = jnp.ones((b,), jnp.float32)
  w_out = jax.random.normal(kw, (dim, 4), jnp.float32) / dim ** 0.5
  variables = jax.jit(layer.init)({"params": jax.random.key(1)}, x_a, x_t)
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k in ("memory", "batch_stats", "constants")}
  tx = optax.sgd(0.01)
  opt_state = tx.init(params)
  key = jax.random.key(2)

  def train_step(params, state, opt_state, x_a, x_t, key):
    def loss_fn(params):
      out, new = layer.apply({"params": params, **state}, x_a, x_t, mask=mask, train=True,
                             rngs={"gumbel": key}, mutable=["memory", "batch_stats"])
      logp = jax.nn.log_softmax(out.fused @ w_out)
      ce = -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))
      return ce + out.aux["memory_similarity"], new
    (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state)
    state = {**state, **jax.lax.stop_gradient(new)}
    return optax.apply_updates(params, updates), state, opt_state, loss

  step = jax.jit(train_step)
  jargs = (params, state, opt_state, x_a, x_t, key)
  impls = {"jax": lambda: jax.block_until_ready(step(*jargs))}

  t = lambda a, dt=torch.float32: torch.as_tensor(np.array(a), dtype=dt, device=device)
  tx_a, tx_t, t_mask, t_w = t(x_a), t(x_t), t(mask), t(w_out)
  t_labels = t(labels, torch.long)
  # Check: the two implementations agree on the same inputs and noise (eval forward).
  ref_check = tr.to_device(tr.from_flax(variables, layer), device)
  with torch.no_grad():
    t_fused = ref_check(tx_a, tx_t, mask=t_mask, train=False).fused.cpu().numpy()
  j_fused = layer.apply(variables, x_a, x_t, mask=mask, train=False).fused
  dev = float(np.max(np.abs(t_fused - np.asarray(j_fused))))

  for name, compiled in (("torch_eager", False), ("torch_compile", True)):
    if compiled and args.no_compile:
      continue
    ref = tr.to_device(tr.from_flax(variables, layer), device)
    model = torch.compile(ref) if compiled else ref
    opt = torch.optim.SGD(ref.parameters(), lr=0.01)

    def torch_step(model=model, opt=opt):
      u = torch.rand(2, b, n, device=device).clamp_min(1e-20)
      g = -torch.log(-torch.log(u))  # Gumbel noise, drawn every step as the JAX step does
      opt.zero_grad(set_to_none=True)
      out = model(tx_a, tx_t, mask=t_mask, train=True, noise=(g[0], g[1]))
      logp = torch.log_softmax(out.fused @ t_w, dim=-1)
      loss = torch.nn.functional.nll_loss(logp, t_labels) + out.aux["memory_similarity"]
      loss.backward()
      opt.step()
      _sync(device)
      return loss
    impls[name] = torch_step
  shape = {"batch": b, "slots": n, "d": d, "cbp_dim": dim}
  return [run_comparison("vs_torch_dmf_train_step", "dmf", impls,
                         (args.rounds, args.iters, args.warmup), shape,
                         {"max_abs_dev_eval_fused": dev,
                          "layer": {k: v for k, v in tr.options(layer, tr.DMF_OPTIONS).items()
                                    if k not in ("dtype", "param_dtype")}})]


def mbaf_rows(args, device):
  """The MBAF layer train step per size and write mode: JAX vs the PyTorch reference."""
  torch = _torch()
  from benchmarks import torch_reference as tr  # pylint: disable=g-import-not-at-top
  rows = []
  cases = MBAF_QUICK if args.quick else MBAF_FULL
  if args.mbaf_cases:
    cases = [c for c in cases if c[0] in args.mbaf_cases.split(",")]
  for case, dims, slots, batch in cases:
    keys = jax.random.split(jax.random.key(0), len(dims) + 2)
    xs = [jax.random.normal(k, (batch, d), jnp.float32) for k, d in zip(keys[2:], dims)]
    for write in ("scan", "batched"):
      layer = MBAF(slots=slots, write=write)
      v = jax.jit(lambda *x, layer=layer: layer.init({"params": keys[0], "memory": keys[1]},
                                                     *x))(*xs)
      step = jax.jit(bench_mbaf_layer.functions(layer)["train_step"])
      impls = {"jax": lambda step=step, v=v: jax.block_until_ready(step(v, *xs))}
      txs = [torch.as_tensor(np.array(x), device=device) for x in xs]
      ref_check = tr.to_device(tr.from_flax(v, layer), device)
      with torch.no_grad():
        t_fused = ref_check(*txs, train=True).fused.cpu().numpy()
      j_fused = jax.jit(lambda v, *x, layer=layer: layer.apply(
          v, *x, train=True, mutable=["memory"])[0].fused)(v, *xs)
      dev = float(np.max(np.abs(t_fused - np.asarray(j_fused))))
      compile_here = case in args.mbaf_compile.split(",") and not args.no_compile
      for name, compiled in (("torch_eager", False), ("torch_compile", True)):
        if compiled and not compile_here:
          continue
        ref = tr.to_device(tr.from_flax(v, layer), device)
        model = torch.compile(ref) if compiled else ref
        opt = torch.optim.SGD(ref.parameters(), lr=1e-3)

        def torch_step(model=model, opt=opt):
          opt.zero_grad(set_to_none=True)
          out = model(*txs, train=True)
          loss = (out.fused ** 2).mean()
          loss.backward()
          opt.step()
          _sync(device)
          return loss
        impls[name] = torch_step
      shape = {"batch": batch, "dims": list(dims), "l": sum(dims), "slots": slots}
      extra = {"case": case, "write": write, "attention": layer.attention,
               "write_max": layer.write_max, "max_abs_dev_train_fused": dev}
      if not compile_here:
        extra["torch_compile_skipped"] = ("--no-compile" if args.no_compile else
                                          "not in --mbaf-compile (PyTorch unrolls the loop over "
                                          "the batch: long compilation)")
      rows.append(run_comparison("vs_torch_mbaf_train_step", "mbaf", impls,
                                 (args.rounds, 1, args.warmup), shape, extra))
      common.emit(rows[-1])
  return rows


# ----------------------------------------------------------------------------- encoders


def hf_config(model_name: str, cfg):
  """transformers' config with the fields of the Flax config ``cfg``."""
  import transformers  # pylint: disable=g-import-not-at-top
  fields = {k: v for k, v in dataclasses.asdict(cfg).items()
            if k not in ("dtype", "param_dtype", "remat", "stop_gradient_feature_encoder",
                         "masked_group_norm", "pos_conv_impl")}
  cls = transformers.Wav2Vec2Config if model_name == "wav2vec2" else transformers.BertConfig
  return cls(**fields)


def same_weights(model_name: str, flax_model, hf_model, inputs) -> dict:
  """The Flax params holding ``hf_model``'s weights (every parameter loaded, none missing)."""
  state = {k: v.detach().cpu().numpy() for k, v in hf_model.state_dict().items()}
  shapes = jax.eval_shape(lambda: flax_model.init(jax.random.key(0), *inputs))["params"]
  prefix = "wav2vec2." if model_name == "wav2vec2" else "bert."
  loaded, _, _, _ = hf_loading.convert_state_dict(state, shapes, prefix)
  flat = flax.traverse_util.flatten_dict(shapes)
  missing = sorted("/".join(p) for p in flat if p not in loaded)
  if missing:
    raise ValueError(f"{model_name}: parameters missing from the PyTorch state dict: {missing}")
  return flax.traverse_util.unflatten_dict({p: jnp.asarray(v) for p, v in loaded.items()})


def encoder_rows(model_name: str, args, device):
  """``fwd`` and ``fwd_bwd`` of one encoder: this library vs transformers' PyTorch model."""
  torch = _torch()
  import transformers  # pylint: disable=g-import-not-at-top
  quick = args.quick
  if model_name == "wav2vec2":
    cfg = (Wav2Vec2Config.tiny if quick else Wav2Vec2Config.base)(layerdrop=0.0)
    model = Wav2Vec2(cfg)
    batch = 2 if quick else args.wav2vec2_batch
    n = int(round((0.1 if quick else args.seconds) * 16000))
    x = jax.random.normal(jax.random.key(0), (batch, n), jnp.float32)
    inputs = (x, jnp.ones((batch, n), jnp.int32))
    shape = {"batch": batch, "samples": n, "size": "tiny" if quick else "base"}
  else:
    cfg = (BertConfig.tiny if quick else BertConfig.base)(layerdrop=0.0)
    model = Bert(cfg)
    batch = 2 if quick else args.bert_batch
    ids = jax.random.randint(jax.random.key(0), (batch, args.tokens), 1, cfg.vocab_size)
    inputs = (ids, jnp.ones((batch, args.tokens), jnp.int32),
              jnp.zeros((batch, args.tokens), jnp.int32))
    shape = {"batch": batch, "tokens": args.tokens, "size": "tiny" if quick else "base"}
  torch.manual_seed(0)
  hf_cls = transformers.Wav2Vec2Model if model_name == "wav2vec2" else transformers.BertModel
  hf = hf_cls(hf_config(model_name, cfg)).to(device)
  params = same_weights(model_name, model, hf, inputs)
  t_in = [torch.as_tensor(np.array(a), device=device) for a in inputs]
  if model_name != "wav2vec2":
    t_in = [a.long() for a in t_in]
  else:
    t_in[1] = t_in[1].long()

  def hf_pooled(out):
    if model_name == "wav2vec2":
      return out.last_hidden_state.mean(dim=1)  # all frames real: the masked mean
    return out.pooler_output

  fwd = jax.jit(lambda p, *a: model.apply({"params": p}, *a).pooled)

  def loss(p, *a):
    out = model.apply({"params": p}, *a, train=True, rngs={"dropout": jax.random.key(2)})
    return jnp.sum(out.pooled ** 2)
  fwd_bwd = jax.jit(jax.grad(loss))

  def t_fwd():
    hf.eval()
    with torch.no_grad():
      out = hf_pooled(hf(*t_in))
    _sync(device)
    return out

  def t_fwd_bwd():
    hf.train()
    hf.zero_grad(set_to_none=True)
    (hf_pooled(hf(*t_in)) ** 2).sum().backward()
    _sync(device)

  dev = float(np.max(np.abs(t_fwd().cpu().numpy() - np.asarray(fwd(params, *inputs)))))
  rows = []
  for mode, jfn, tfn in (("fwd", fwd, t_fwd), ("fwd_bwd", fwd_bwd, t_fwd_bwd)):
    impls = {"jax": lambda jfn=jfn: jax.block_until_ready(jfn(params, *inputs)),
             "torch_eager": tfn}
    timing = (args.encoder_rounds, 1, 0)  # the first (compiling) call is the warm-up
    rows.append(run_comparison(f"vs_torch_{model_name}_{mode}", model_name, impls, timing, shape,
                               {"max_abs_dev_eval_pooled": dev, "layerdrop": 0.0,
                                "params_m": round(sum(v.size for v in jax.tree.leaves(params))
                                                  / 1e6, 2),
                                "transformers_version": transformers.__version__}))
    common.emit(rows[-1])
  return rows


def conv_rows(args, device):
  """Wav2Vec2-base's convolutional feature encoder alone, forward+backward: the part that bounds
  the full model's forward+backward on a CPU (its strided convolutions' backward)."""
  torch = _torch()
  import transformers  # pylint: disable=g-import-not-at-top
  cfg = (Wav2Vec2Config.tiny if args.quick else Wav2Vec2Config.base)(layerdrop=0.0)
  batch = 2 if args.quick else args.wav2vec2_batch
  n = int(round((0.1 if args.quick else args.seconds) * 16000))
  x = jax.random.normal(jax.random.key(0), (batch, n), jnp.float32)
  torch.manual_seed(0)
  hf = transformers.Wav2Vec2Model(hf_config("wav2vec2", cfg)).to(device)
  params = same_weights("wav2vec2", Wav2Vec2(cfg), hf, (x, jnp.ones((batch, n), jnp.int32)))
  enc = FeatureEncoder(cfg)
  fe = {"params": params["feature_extractor"]}
  grad = jax.jit(jax.grad(lambda p, x: jnp.sum(enc.apply({"params": p}, x) ** 2)))
  t_x = torch.as_tensor(np.array(x), device=device)

  def t_fwd_bwd():
    hf.zero_grad(set_to_none=True)
    (hf.feature_extractor(t_x) ** 2).sum().backward()
    _sync(device)

  impls = {"jax": lambda: jax.block_until_ready(grad(fe["params"], x)), "torch_eager": t_fwd_bwd}
  shape = {"batch": batch, "samples": n, "size": "tiny" if args.quick else "base"}
  rec = run_comparison("vs_torch_wav2vec2_conv_fwd_bwd", "wav2vec2_conv", impls,
                       (args.encoder_rounds, 1, 0), shape, {})
  common.emit(rec)
  return [rec]


def posconv_rows(args, device):
  """Wav2Vec2-base's positional convolution alone (weight norm, grouped conv 768 → 768, K 128,
  16 groups, same-pad, GELU) at the frames of ``--seconds`` of audio: this library's default
  (``pos_conv_impl="auto"``: on CPU the per-group weight gradient of ``ops.conv``), XLA's own
  grouped convolution (``jax_xla``) and transformers' ``Wav2Vec2PositionalConvEmbedding`` with the
  same weights; ``fwd`` and ``fwd_bwd`` (gradient of ``Σ y·c`` w.r.t. the input and every
  parameter). ``ratio_jax_xla`` = XLA-conv time / default time: the fix's speed-up."""
  torch = _torch()
  import transformers  # pylint: disable=g-import-not-at-top
  base = (Wav2Vec2Config.tiny if args.quick else Wav2Vec2Config.base)(layerdrop=0.0)
  batch = 2 if args.quick else args.wav2vec2_batch
  n = int(round((0.1 if args.quick else args.seconds) * 16000))
  frames = int(feat_extract_output_lengths(n, base.conv_kernel, base.conv_stride))
  torch.manual_seed(0)
  hf = transformers.Wav2Vec2Model(hf_config("wav2vec2", base)).to(device)
  params = same_weights("wav2vec2", Wav2Vec2(base), hf,
                        (jnp.zeros((1, n)), jnp.ones((1, n), jnp.int32)))
  p_conv = params["encoder"]["pos_conv_embed"]
  kx, kc = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (batch, frames, base.hidden_size), jnp.float32)
  cot = jax.random.normal(kc, x.shape, jnp.float32)
  t_x = torch.as_tensor(np.array(x), device=device)
  t_cot = torch.as_tensor(np.array(cot), device=device)
  hf_pos = hf.encoder.pos_conv_embed
  jfns, devs = {}, {}
  for name, impl in (("jax", "auto"), ("jax_xla", "xla")):
    mod = PositionalConvEmbedding(dataclasses.replace(base, pos_conv_impl=impl))
    fwd = jax.jit(lambda p, x, mod=mod: mod.apply({"params": p}, x))
    grad = jax.jit(jax.grad(lambda p, x, mod=mod: jnp.sum(mod.apply({"params": p}, x) * cot),
                            (0, 1)))
    jfns[name] = (fwd, grad)
  with torch.no_grad():
    t_y = hf_pos(t_x).cpu().numpy()
  for name, (fwd, _) in jfns.items():
    devs[f"max_abs_dev_fwd_{name}"] = float(np.max(np.abs(t_y - np.asarray(fwd(p_conv, x)))))
  g_auto, g_xla = (jfns[k][1](p_conv, x) for k in ("jax", "jax_xla"))
  devs["max_abs_dev_grads_auto_vs_xla"] = max(
      float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g_auto),
                                                      jax.tree.leaves(g_xla)))
  t_x_req = t_x.clone().requires_grad_(True)

  def t_fwd():
    with torch.no_grad():
      out = hf_pos(t_x)
    _sync(device)
    return out

  def t_fwd_bwd():
    hf_pos.zero_grad(set_to_none=True)
    t_x_req.grad = None
    (hf_pos(t_x_req) * t_cot).sum().backward()
    _sync(device)

  shape = {"batch": batch, "frames": frames, "channels": base.hidden_size,
           "kernel": base.num_conv_pos_embeddings, "groups": base.num_conv_pos_embedding_groups}
  extra = dict(devs, default_impl=conv_ops.resolve_impl("auto", base.num_conv_pos_embedding_groups))
  rows = []
  for mode, k, tfn in (("fwd", 0, t_fwd), ("fwd_bwd", 1, t_fwd_bwd)):
    impls = {name: (lambda f=fns[k]: jax.block_until_ready(f(p_conv, x)))
             for name, fns in jfns.items()}
    impls["torch_eager"] = tfn
    rows.append(run_comparison(f"vs_torch_wav2vec2_posconv_{mode}", "wav2vec2_posconv", impls,
                               (args.rounds, args.iters, args.warmup), shape, extra))
    common.emit(rows[-1])
  return rows


# ----------------------------------------------------------------------------- whole model


def dmf_model_rows(args, device):
  """The whole DMF model (``configs/iemocap.py``: Wav2Vec2-base + BERT-base + DualMemoryFusion or
  naive concatenation + head, 5 s of audio / 30 tokens, encoders' frozen parts frozen, layerdrop
  0) against its PyTorch twin of ``dmf_model_torch.py`` (same weights): one optimizer step, and
  the evaluation forward at batch 1. The step-0 losses with dropout off must agree."""
  torch = _torch()
  from benchmarks import dmf_model_torch as dm  # pylint: disable=g-import-not-at-top
  rows = []
  c = dm.model_config(args.quick)
  b = 2 if args.quick else args.dmf_model_batch
  vocab = (BertConfig.tiny() if args.quick else BertConfig.base()).vocab_size
  timing = (args.encoder_rounds, 1, 0)  # the first (compiling) call is the warm-up
  for kind in ("dmf", "naive"):
    batch = dm.random_batch(c, b, vocab)
    model, variables, tm = dm.build_pair(c, kind, batch, device=device)
    check = dm.step0_loss_deviation(model, variables, tm, batch, device)
    # Batch-1 inference: both sides' outputs before any step changes the PyTorch weights.
    b1 = {k: v[:1] for k, v in batch.items()}
    infer = jax.jit(lambda v, x, m: model.apply(v, x, mask=m, train=False).log_probs)
    j_in = (dm.inputs_of(b1), b1["mask"])
    tb1 = dm.torch_batch(b1, device)
    tm.eval()
    with torch.no_grad():
      t_out = tm(tb1, tb1["mask"], False, None)[0].cpu().numpy()
    infer_dev = float(np.max(np.abs(t_out - np.asarray(infer(variables, *j_in)))))
    saved = dm.snapshot(tm)  # the timed PyTorch steps update it in place; restored below
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    tx = dm.optimizer(params, state.get("memory", {}))
    # As the trainer: the state is donated and carried from step to step (new memory included).
    step = jax.jit(dm.make_jax_train_step(model, tx), donate_argnums=(0, 1, 2))
    carry = [jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, state), tx.init(params)]
    key = jax.random.key(1)

    def jax_step(step=step, carry=carry, batch=batch):
      out = step(*carry, batch, key)
      carry[:] = out[:3]
      return jax.block_until_ready(out[3])
    impls = {"jax": jax_step}
    tb = dm.torch_batch(batch, device)
    for name, compiled in (("torch_eager", False), ("torch_compile", True)):
      if compiled and args.no_compile:
        continue
      forward = torch.compile(tm) if compiled else tm
      opt = dm.torch_optimizer(tm)

      def torch_step(forward=forward, opt=opt, tm=tm, tb=tb):
        tm.train()
        loss = dm.torch_train_step(tm, forward, opt, tb, dm.torch_gumbel(tm, b, device))
        _sync(device)
        return loss
      impls[name] = torch_step
    shape = {"batch": b, "audio_samples": int(batch["input_values"].shape[1]),
             "tokens": int(batch["input_ids"].shape[1]), "kind": kind,
             "size": "tiny" if args.quick else "base"}
    extra = {"kind": kind, "step0": check, "frozen": "Wav2Vec2 conv feature encoder, BERT "
             "embeddings (DMF §2.1)", "layerdrop": 0.0,
             "params_m": round(sum(v.size for v in jax.tree.leaves(params)) / 1e6, 2)}
    if kind == "dmf":
      extra["fusion"] = {k: v for k, v in c.model.fusion.dmf.items()}
    rows.append(run_comparison(f"vs_torch_dmf_model_train_step_{kind}", "dmf_model", impls,
                               timing, shape, extra))
    common.emit(rows[-1])
    # Batch-1 inference latency (evaluation forward: memory read, no write), same weights again.
    dm.restore(tm, saved)
    impls = {"jax": lambda infer=infer, variables=variables, j_in=j_in:
             jax.block_until_ready(infer(variables, *j_in))}
    for name, compiled in (("torch_eager", False), ("torch_compile", True)):
      if compiled and args.no_compile:
        continue
      forward = torch.compile(tm) if compiled else tm

      def torch_infer(forward=forward, tm=tm, tb1=tb1):
        tm.eval()
        with torch.no_grad():
          out = forward(tb1, tb1["mask"], False, None)[0]
        _sync(device)
        return out
      impls[name] = torch_infer
    rows.append(run_comparison(f"vs_torch_dmf_model_infer_b1_{kind}", "dmf_model_infer", impls,
                               (args.rounds, args.iters, args.warmup), dict(shape, batch=1),
                               {"kind": kind, "max_abs_dev_log_probs": infer_dev}))
    common.emit(rows[-1])
  return rows


# ----------------------------------------------------------------------------- main


def main(argv=None):
  """Command line (``argv``: the arguments, default ``sys.argv[1:]``)."""
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--rounds", type=int, default=None,
                 help="interleaved rounds of the layers (default 7, quick 2); --iters calls per "
                      "round for DMF (default 3), 1 for MBAF")
  p.add_argument("--encoder-rounds", type=int, default=None,
                 help="interleaved rounds of the encoders, one call each (default 3, quick 2)")
  p.add_argument("--only", default=",".join(DEFAULT),
                 help=f"comma list of {','.join(ALL)} (default: {','.join(DEFAULT)})")
  p.add_argument("--dmf-model-batch", type=int, default=4,
                 help="batch of the whole-model train step (dmf_model; default 4)")
  p.add_argument("--mbaf-cases", default="", help="comma list of iemocap,cebs (default both)")
  p.add_argument("--wav2vec2-batch", type=int, default=8)
  p.add_argument("--bert-batch", type=int, default=8)
  p.add_argument("--seconds", type=float, default=5.0, help="audio length (DMF: 5 s)")
  p.add_argument("--tokens", type=int, default=30, help="text length (DMF: 30)")
  p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
  p.add_argument("--torch-threads", type=int, default=None,
                 help="torch.set_num_threads (default: PyTorch's, one per core)")
  p.add_argument("--mbaf-compile", default="quick,cebs",
                 help="MBAF cases also run under torch.compile (IEMOCAP's l = 6,848 with 64 "
                      "unrolled writes compiles for minutes)")
  args = p.parse_args(argv)
  args.warmup, args.iters = (args.warmup if args.warmup is not None else 1,
                             args.iters if args.iters is not None else (1 if args.quick else 3))
  args.rounds = args.rounds or (2 if args.quick else 7)
  args.encoder_rounds = args.encoder_rounds or (2 if args.quick else 3)
  only = [s for s in args.only.split(",") if s]
  unknown = set(only) - set(ALL)
  if unknown:
    raise SystemExit(f"--only: unknown {sorted(unknown)}; expected a comma list of {ALL}")
  try:
    torch = _torch()
  except ImportError as e:
    raise SystemExit("bench_vs_torch needs PyTorch: pip install -e '.[bench]'") from e
  device = "cuda" if torch.cuda.is_available() else "cpu"
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  if "dmf" in only:
    for rec in dmf_rows(args, device):
      common.emit(rec)
  if "mbaf" in only:
    mbaf_rows(args, device)
  for model_name in ("wav2vec2", "bert"):
    if model_name in only:
      encoder_rows(model_name, args, device)
  if "dmf_model" in only:
    dmf_model_rows(args, device)
  if "wav2vec2_conv" in only:
    conv_rows(args, device)
  if "wav2vec2_posconv" in only:
    posconv_rows(args, device)


if __name__ == "__main__":
  main()
