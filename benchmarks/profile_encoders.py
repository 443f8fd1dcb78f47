r"""Where the encoders' forward+backward time goes, per XLA op and per PyTorch op.

Wav2Vec2-base (``--wav2vec2-batch`` × ``--seconds`` of 16 kHz audio) and BERT-base
(``--bert-batch`` × ``--tokens``), training forward (dropout, SpecAugment; layerdrop 0) and the
gradient of ``Σ pooled²`` w.r.t. every parameter — ``bench_vs_torch.py``'s ``fwd_bwd`` rows —
with the *same* weights in this library and in transformers' PyTorch models:

* **XLA**: ``jax.profiler`` traces ``--iters`` calls of the compiled function; each executed HLO
  instruction (a fusion, convolution, dot, custom call, …) is one event on the CPU plane, named
  as in the compiled HLO. Events are summed per instruction and joined with the HLO text: the
  opcode, and the ``op_name`` metadata, from which come the *scope* (the Flax module path, layer
  numbers folded: ``encoder/layers_*/attention/q_proj``) and the direction (``bwd`` when the
  op_name holds ``transpose(``, the backward pass).
* **PyTorch**: ``torch.profiler`` over ``--iters`` calls; ``key_averages()`` per ATen op, self CPU
  time (the op's own time, children excluded).

One JSON line per (model, implementation): ``wall_ms_per_call`` (the profiled calls' wall time,
per call), ``op_ms_per_call`` (the ops' summed time; above the wall time when ops ran side by
side on several threads), ``top_ops`` (the ``--top`` largest: name, opcode, scope, direction,
ms per call, share of the op total) and ``by_scope`` (XLA: per module scope and direction).
The same tables are printed to stderr as Markdown. Timings under load are not comparable
across runs (each line holds the 1-minute load average before and after and ``quiet``); the
shares are more robust than the times.

    python -m benchmarks.profile_encoders --quick                    # tiny models: a smoke check
    python -m benchmarks.profile_encoders --wav2vec2-batch 4         # the issue's shapes (~3 min)
    python -m benchmarks.profile_encoders --only wav2vec2 --frozen   # + DMF's frozen conv encoder
"""
import argparse
import collections
import dataclasses
import glob
import os
import re
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import bench_vs_torch, common
from mbaf_jax.encoders import Bert, BertConfig, Wav2Vec2, Wav2Vec2Config

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (?:\([^=]*?\)|\S+) ([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_LAYER = re.compile(r"(layers?_)\d+")


def hlo_instructions(hlo_text: str) -> dict:
  """Every instruction of a compiled module's HLO text → ``(opcode, op_name)``.

  Args:
    hlo_text: ``compiled.as_text()``.

  Returns:
    name → ``(opcode, op_name metadata or "")``; for a fusion the opcode is ``fusion``.
  """
  out = {}
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if not m:
      continue
    op = _OP_NAME.search(line)
    out[m.group(1)] = (m.group(2), op.group(1) if op else "")
  return out


def scope_of(op_name: str) -> tuple[str, str]:
  """``(scope, direction)`` from an HLO op_name: the Flax module path with transformations and
  the primitive stripped and layer numbers folded, and ``"bwd"``/``"fwd"``.

  Example:
    >>> scope_of("jit(f)/transpose(jvp(Wav2Vec2))/encoder/layers_3/attention/q_proj/dot_general")
    ('encoder/layers_*/attention/q_proj', 'bwd')
  """
  direction = "bwd" if "transpose(" in op_name else "fwd"
  parts = [p for p in op_name.split("/") if p and "(" not in p and ")" not in p]
  parts = parts[:-1] if len(parts) > 1 else parts  # the last part is the primitive
  keep = []
  for p in parts:
    if p in ("while", "body", "cond", "closed_call", "checkpoint", "remat"):
      break
    keep.append(_LAYER.sub(r"\1*", p))
  return "/".join(keep) or "(top)", direction


def _trace_events(trace_dir: str) -> list:
  """``(name, duration_ns)`` of every event on the host CPU plane of the trace in ``trace_dir``."""
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  if not paths:
    raise RuntimeError(f"jax.profiler wrote no .xplane.pb under {trace_dir}")
  data = ProfileData.from_file(max(paths, key=os.path.getmtime))
  events = []
  for plane in data.planes:
    if not plane.name.startswith("/host:CPU") and not plane.name.startswith("/device:"):
      continue
    for line in plane.lines:
      events += [(e.name, e.duration_ns) for e in line.events]
  return events


def profile_jax(fn, args, iters: int) -> dict:
  """Per-HLO-instruction times of the jitted ``fn(*args)`` over ``iters`` traced calls.

  Returns:
    ``{"wall_ms_per_call", "op_ms_per_call", "ops": [{name, opcode, scope, direction,
    ms_per_call, calls_per_call}], "traced_events"}``, ops largest first.
  """
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))  # warm-up
  instrs = hlo_instructions(compiled.as_text())
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d)
    t0 = time.perf_counter()
    for _ in range(iters):
      jax.block_until_ready(compiled(*args))
    wall = (time.perf_counter() - t0) * 1e3 / iters
    jax.profiler.stop_trace()
    events = _trace_events(d)
  total, count = collections.Counter(), collections.Counter()
  for name, ns in events:
    if name in instrs:
      total[name] += ns
      count[name] += 1
  ops = []
  for name, ns in total.most_common():
    opcode, op_name = instrs[name]
    scope, direction = scope_of(op_name)
    ops.append({"name": name, "opcode": opcode, "scope": scope, "direction": direction,
                "ms_per_call": ns / 1e6 / iters, "calls_per_call": count[name] / iters})
  return {"wall_ms_per_call": wall, "op_ms_per_call": sum(total.values()) / 1e6 / iters,
          "ops": ops, "traced_events": len(events)}


def by_scope(ops: list) -> list:
  """Op times summed per ``(scope, direction)``, largest first."""
  acc = collections.Counter()
  for o in ops:
    acc[(o["scope"], o["direction"])] += o["ms_per_call"]
  return [{"scope": s, "direction": d, "ms_per_call": ms} for (s, d), ms in acc.most_common()]


def profile_torch(fn, iters: int) -> dict:
  """Per-ATen-op self CPU times of ``fn()`` over ``iters`` profiled calls (after one warm-up).

  Returns:
    ``{"wall_ms_per_call", "op_ms_per_call", "ops": [{name, ms_per_call, calls_per_call}]}``.
  """
  import torch  # pylint: disable=g-import-not-at-top
  fn()
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    t0 = time.perf_counter()
    for _ in range(iters):
      fn()
    wall = (time.perf_counter() - t0) * 1e3 / iters
  ops = [{"name": e.key, "ms_per_call": e.self_cpu_time_total / 1e3 / iters,
          "calls_per_call": e.count / iters} for e in prof.key_averages()]
  ops = sorted((o for o in ops if o["ms_per_call"] > 0), key=lambda o: -o["ms_per_call"])
  return {"wall_ms_per_call": wall, "op_ms_per_call": sum(o["ms_per_call"] for o in ops),
          "ops": ops}


def _round(rows: list, total: float) -> list:
  out = []
  for r in rows:
    r = dict(r, ms_per_call=round(r["ms_per_call"], 3),
             share=round(r["ms_per_call"] / total, 4) if total else None)
    if "calls_per_call" in r:
      r["calls_per_call"] = round(r["calls_per_call"], 2)
    out.append(r)
  return out


def markdown(title: str, rows: list, cols: list) -> str:
  """A Markdown table of ``rows`` (dicts) with the columns ``cols``."""
  lines = [f"\n### {title}\n", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
  return "\n".join(lines)


def _models(name: str, args):
  """``(flax model, flax params, jax inputs, hf model, torch inputs, shape)`` with equal weights."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  if name.startswith("wav2vec2"):
    cfg = (Wav2Vec2Config.tiny if args.quick else Wav2Vec2Config.base)(
        layerdrop=0.0, stop_gradient_feature_encoder=name.endswith("frozen"))
    model = Wav2Vec2(cfg)
    batch = 2 if args.quick else args.wav2vec2_batch
    n = int(round((0.1 if args.quick else args.seconds) * 16000))
    x = jax.random.normal(jax.random.key(0), (batch, n), jnp.float32)
    inputs = (x, jnp.ones((batch, n), jnp.int32))
    shape = {"batch": batch, "samples": n}
    hf_cls = transformers.Wav2Vec2Model
  else:
    cfg = (BertConfig.tiny if args.quick else BertConfig.base)()
    model = Bert(cfg)
    batch = 2 if args.quick else args.bert_batch
    ids = jax.random.randint(jax.random.key(0), (batch, args.tokens), 1, cfg.vocab_size)
    inputs = (ids, jnp.ones((batch, args.tokens), jnp.int32),
              jnp.zeros((batch, args.tokens), jnp.int32))
    shape = {"batch": batch, "tokens": args.tokens}
    hf_cls = transformers.BertModel
  kind = "wav2vec2" if name.startswith("wav2vec2") else "bert"
  torch.manual_seed(0)
  hf = hf_cls(bench_vs_torch.hf_config(kind, cfg))
  params = bench_vs_torch.same_weights(kind, model, hf, inputs)
  t_in = [torch.as_tensor(np.array(a)).long() if i or kind == "bert"
          else torch.as_tensor(np.array(a)) for i, a in enumerate(inputs)]
  if name.endswith("frozen"):
    hf.freeze_feature_encoder()
  shape["size"] = "tiny" if args.quick else "base"
  return model, params, inputs, hf, t_in, shape


def profile_model(name: str, args) -> list:
  """The XLA and PyTorch profiles of one model's forward+backward; one record each."""
  model, params, inputs, hf, t_in, shape = _models(name, args)

  def loss(p, *a):
    out = model.apply({"params": p}, *a, train=True, rngs={"dropout": jax.random.key(2)})
    return jnp.sum(out.pooled ** 2)

  def hf_step():
    hf.train()
    hf.zero_grad(set_to_none=True)
    out = hf(*t_in)
    pooled = out.last_hidden_state.mean(1) if name.startswith("wav2vec2") else out.pooler_output
    (pooled ** 2).sum().backward()

  recs = []
  for impl in ("jax", "torch"):
    if impl == "torch" and args.no_torch:
      continue
    load0, cpu0 = os.getloadavg(), bench_vs_torch.cpu_sample()
    prof = (profile_jax(jax.grad(loss), (params,) + tuple(inputs), args.iters) if impl == "jax"
            else profile_torch(hf_step, args.iters))
    load1 = os.getloadavg()
    total = prof["op_ms_per_call"]
    rec = {"bench": f"profile_{name}_fwd_bwd_{impl}", "device": common.device_name(),
           "cpu_model": bench_vs_torch.cpu_model(), "shape": shape, "dtype": "float32",
           "iters": args.iters, "median_ms": round(prof["wall_ms_per_call"], 3),
           "wall_ms_per_call": round(prof["wall_ms_per_call"], 3),
           "op_ms_per_call": round(total, 3), "throughput": None,
           "peak_mem_mb": round(common.peak_mem_mb(), 1),
           "loadavg_before": [round(v, 2) for v in load0],
           "loadavg_after": [round(v, 2) for v in load1],
           "quiet": bench_vs_torch.is_quiet(load0[0], load1[0]),
           "other_cpu_cores": bench_vs_torch.other_cpu_cores(cpu0, bench_vs_torch.cpu_sample()),
           "top_ops": _round(prof["ops"][:args.top], total)}
    if impl == "jax":
      rec["by_scope"] = _round(by_scope(prof["ops"])[:args.top], total)
      rec["traced_events"] = prof["traced_events"]
      print(markdown(f"{name} fwd+bwd, XLA: top ops ({rec['wall_ms_per_call']} ms/call wall, "
                     f"{rec['op_ms_per_call']} ms/call in ops)", rec["top_ops"],
                     ["name", "opcode", "scope", "direction", "ms_per_call", "share"]),
            file=sys.stderr)
      print(markdown(f"{name} fwd+bwd, XLA: by module scope", rec["by_scope"],
                     ["scope", "direction", "ms_per_call", "share"]), file=sys.stderr)
    else:
      rec["torch_threads"] = __import__("torch").get_num_threads()
      print(markdown(f"{name} fwd+bwd, PyTorch: top ops by self CPU time "
                     f"({rec['wall_ms_per_call']} ms/call wall)", rec["top_ops"],
                     ["name", "calls_per_call", "ms_per_call", "share"]), file=sys.stderr)
    common.emit(rec)
    recs.append(rec)
  return recs


def main(argv=None):
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--only", default="wav2vec2,bert",
                 help="comma list of wav2vec2, wav2vec2_frozen (stop_gradient_feature_encoder, "
                      "as DMF trains it), bert")
  p.add_argument("--frozen", action="store_true", help="also wav2vec2_frozen")
  p.add_argument("--wav2vec2-batch", type=int, default=4)
  p.add_argument("--bert-batch", type=int, default=8)
  p.add_argument("--seconds", type=float, default=5.0)
  p.add_argument("--tokens", type=int, default=30)
  p.add_argument("--top", type=int, default=25, help="rows of each table")
  p.add_argument("--no-torch", action="store_true", help="profile this library only")
  args = p.parse_args(argv)
  args.iters = args.iters or (1 if args.quick else 3)
  if args.quick:
    args.tokens = 8
  names = [s for s in args.only.split(",") if s]
  if args.frozen and "wav2vec2_frozen" not in names:
    names.insert(names.index("wav2vec2") + 1 if "wav2vec2" in names else 0, "wav2vec2_frozen")
  bad = set(names) - {"wav2vec2", "wav2vec2_frozen", "bert"}
  if bad:
    raise SystemExit(f"--only: unknown {sorted(bad)}")
  for name in names:
    profile_model(name, args)


if __name__ == "__main__":
  main()
