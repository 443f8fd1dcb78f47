r"""Block diagrams of the full models, generated from the code's own module tree.

The models are built exactly as the training pipeline builds them
(``mbaf_jax.models.factory.build_model(config.model, fusion_kind, ...)`` with a config of
``configs/``) and traced abstractly, so base-size encoders take seconds on a CPU:

* ``jax.eval_shape(model.init)`` gives the parameter tree (parameter counts per module) and the
  ``'memory'`` collection (the memory slots);
* ``jax.make_jaxpr`` of ``model.apply(..., train=True, mutable=["memory", "batch_stats"])`` — one
  training step's forward pass — runs under ``flax.linen.intercept_methods``, which records every
  module call (path in the tree, class, input and output shapes) and wraps it in a
  ``jax.named_scope``, so every equation of the jaxpr knows which module computed it.

Boxes are modules (name, class, output shapes with B = batch, parameter count). Arrows are the
data flow read off the jaxpr (:func:`data_flow`): A → B when a value computed in A reaches an
input of B, solid when it is passed on unchanged, dashed when other operations (masking, a sum)
come in between. The upper panel is the model's top level; the lower panel opens the ``fusion``
module one level down (when it has submodules). Green arrows are the ``'memory'`` collection:
"read" into the modules that use the memory of the previous step, "write (train)" out of the
modules whose results become the new memory (write-then-carry: stored without gradient for the
next step). The batch mask reaches every module that needs it and is not drawn.

  python scripts/draw_architecture.py        # docs/figures/{dmf,mbaf_iemocap,mbaf_cebs}.png
  python scripts/draw_architecture.py --out /tmp/figs --only dmf
  python scripts/draw_architecture.py --print         # also print every module path
"""
import argparse
import dataclasses
import importlib.util
import io
import os
import re
import sys
import warnings
from typing import Any, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

BATCH = 7  # abstract batch size; a leading dimension of this size is drawn as "B"
VOCAB = 10000  # vocabulary of the MBAF text encoder (a real run builds it from the transcripts)

FIGURES = {  # name -> (config file, variant, caption)
    "dmf": ("configs/iemocap.py", "", "DMF on IEMOCAP (configs/iemocap.py)"),
    "mbaf_iemocap": ("configs/iemocap_mbaf.py", "",
                     "MBAF-III on IEMOCAP (configs/iemocap_mbaf.py)"),
    "mbaf_cebs": ("configs/cebs.py", "", "MBAF on CEBS F-IV (configs/cebs.py)"),
}


@dataclasses.dataclass
class Call:
  """One module of the tree, as first called."""
  path: tuple  # module path in the tree, e.g. ("fusion", "reader_a")
  cls: str  # class name
  out_shapes: list  # shapes of the array leaves it returned (first call)
  in_shapes: list  # shapes of the array leaves it received (first call)
  calls: int = 1  # how often this path was called (a shared module, e.g. DMF's CBP, twice)


@dataclasses.dataclass
class Trace:
  """What :func:`trace_model` found."""
  name: str  # figure name
  caption: str  # figure title
  calls: list  # Call per module path, in first-call order
  param_counts: dict  # path tuple -> number of parameters under it
  param_shapes: dict  # path tuple -> {param name: shape} of its own (direct) parameters
  memory: dict  # owner path tuple -> {variable name: shape} of the 'memory' collection
  batch: dict  # model input name -> shape
  jaxpr: Any  # ClosedJaxpr of the train-mode forward pass, module calls tagged "MOD<i>"
  invar_kind: list  # per jaxpr invar: "in" (batch), "mask", "memory" or "" (params, stats, ...)
  outvar_kind: list  # per jaxpr outvar: "out" (model output), "memory" (new memory), or ""
  optim: str = ""  # e.g. "sgd, lr 0.01 (network) / 0.001 (fusion)"


def load_config(spec: str):
  """``configs/x.py[:variant]`` → the ``get_config(variant)`` ConfigDict (like ``--config=``)."""
  path, _, variant = spec.partition(":")
  full = path if os.path.isabs(path) else os.path.join(ROOT, path)
  if not os.path.isfile(full):
    raise ValueError(f"config file {path!r} does not exist; pass configs/<name>.py[:variant].")
  mod_spec = importlib.util.spec_from_file_location(
      "_cfg_" + os.path.basename(path)[:-3], full)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  return module.get_config(variant or None)


def _shape(x) -> tuple:
  return tuple(getattr(x, "shape", ()))


def _leaves(tree) -> list:
  import jax  # pylint: disable=g-import-not-at-top
  return [x for x in jax.tree.leaves(tree) if hasattr(x, "shape")]


def _flat(tree, prefix=()) -> dict:
  """Nested dict of arrays → {path tuple: array}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, "items"):
      out.update(_flat(dict(v), prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _key_names(path) -> list:
  return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def trace_model(config_spec: str, name: str = "", caption: str = "") -> Trace:
  """Builds the model of ``config_spec`` as the trainer does and traces it (:func:`trace_module`).

  Args:
    config_spec: ``configs/x.py[:variant]``; the first kind of ``config.fusions`` is used.
    name, caption: figure name and title.

  Returns:
    A :class:`Trace`.
  """
  from mbaf_jax.models import factory  # pylint: disable=g-import-not-at-top

  c = load_config(config_spec)
  kind = c.fusions.split(",")[0].strip()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # e.g. "no GloVe file: random embeddings"
    model, _ = factory.build_model(c.model, kind, vocab_size=VOCAB,
                                   max_tokens=int(c.data.max_tokens))
  o = c.optim
  optim = f"{o.name}, lr {o.learning_rate:g} (network) / {o.memory_learning_rate:g} (fusion)"
  return trace_module(model, factory.dummy_batch(c.data, c.model, BATCH), name, caption, optim)


def trace_module(model, batch: dict, name: str = "", caption: str = "", optim: str = "") -> Trace:
  """Traces ``model.apply(variables, batch, mask=..., train=True)`` abstractly.

  Args:
    model: a linen module called as the full models are (``batch`` dict, ``mask``, ``train``).
    batch: inputs with a leading batch dimension :data:`BATCH` (arrays or shape structs).
    name, caption, optim: figure name, title and optimiser description.

  Returns:
    A :class:`Trace`.
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    mask = np.ones((BATCH,), bool)
    key = jax.random.key(0)
    rngs = {"params": key, "memory": key, "dropout": key, "gumbel": key}
    variables = jax.eval_shape(
        lambda k: model.init(dict(rngs, params=k), batch, mask=mask, train=False), key)

    calls: dict[tuple, Call] = {}

    def interceptor(next_fun, args, kwargs, context):
      if context.method_name != "__call__":
        return next_fun(*args, **kwargs)
      path = tuple(context.module.path)
      if path not in calls:
        calls[path] = Call(path, type(context.module).__name__, [],
                           [_shape(x) for x in _leaves((args, kwargs))], 0)
      tag = f"MOD{list(calls).index(path)}"
      with jax.named_scope(tag):
        out = next_fun(*args, **kwargs)
      if not calls[path].calls:
        calls[path].out_shapes = [_shape(x) for x in _leaves(out)]
      calls[path].calls += 1
      return out

    def train_forward(v, b, m):
      with nn.intercept_methods(interceptor):
        return model.apply(v, b, mask=m, train=True, rngs={"dropout": key, "gumbel": key},
                           mutable=["memory", "batch_stats"])

    closed, out_shape = jax.make_jaxpr(train_forward, return_shape=True)(variables, batch, mask)
  in_paths = jax.tree_util.tree_flatten_with_path((dict(variables), batch, mask))[0]
  invar_kind = []
  for path, _ in in_paths:
    names = _key_names(path)
    if path[0].idx == 2:
      invar_kind.append("mask")
    elif path[0].idx == 1:
      invar_kind.append("in")
    else:
      invar_kind.append("memory" if names[1] == "memory" else "")
  out_paths = jax.tree_util.tree_flatten_with_path(out_shape)[0]
  outvar_kind = []
  for path, _ in out_paths:
    names = _key_names(path)
    outvar_kind.append("out" if path[0].idx == 0 else
                       "memory" if names[1] == "memory" else "")
  params = _flat(dict(variables["params"]))
  counts, own = {}, {}
  for p, leaf in params.items():
    n = int(np.prod(leaf.shape)) if leaf.shape else 1
    for i in range(len(p)):
      counts[p[:i]] = counts.get(p[:i], 0) + n
    own.setdefault(p[:-1], {})[p[-1]] = tuple(leaf.shape)
  memory = {}
  for p, leaf in _flat(dict(variables.get("memory", {}))).items():
    memory.setdefault(p[:-1], {})[p[-1]] = tuple(leaf.shape)
  shapes = {k: _shape(v) if not isinstance(v, tuple) else [_shape(x) for x in v]
            for k, v in batch.items()}
  return Trace(name, caption, list(calls.values()), counts, own, memory, shapes, closed,
               invar_kind, outvar_kind, optim)


def module_paths(trace: Trace) -> list:
  """Every recorded module path as a "/"-joined string (the root is "")."""
  return ["/".join(c.path) for c in trace.calls]


# --------------------------------------------------------------------------- graph


def _fmt_shape(shape) -> str:
  dims = ["B" if i == 0 and d == BATCH else str(d) for i, d in enumerate(shape)]
  return "(" + ", ".join(dims) + ")"


def _fmt_count(n: int) -> str:
  if n >= 1e6:
    return f"{n / 1e6:.2f} M params"
  if n >= 1e3:
    return f"{n / 1e3:.1f} k params"
  return f"{n} params"


_TAG = re.compile(r"^MOD(\d+)$")


def data_flow(trace: Trace, parent: tuple, children: Sequence[tuple]) -> set:
  """Edges between the children of ``parent`` from the traced jaxpr.

  Every equation is attributed, by the module scopes on its name stack, to a child, to
  ``parent`` itself (glue code such as masking or a sum) or to the outside. Values are followed
  through the glue, so an edge S → X means an output of child S reaches an input of child X
  (``direct``: passed unchanged; otherwise through glue operations).

  Returns:
    A set of ``(src, dst, direct)``; src/dst are child path strings, "in" (the panel's inputs:
    the batch, or for a submodule panel what enters ``parent``), "memory" (the memory state read)
    and "out" / "memory" as destinations (the panel's outputs, the new memory written).
  """
  from jax.extend import core as jex_core  # pylint: disable=g-import-not-at-top
  index = {c.path: i for i, c in enumerate(trace.calls)}
  p_tag = index[parent]
  child_tags = {index[c]: "/".join(c) for c in children}
  jaxpr = trace.jaxpr.jaxpr

  def owner(eqn):
    tags = [int(m.group(1)) for part in str(eqn.source_info.name_stack).split("/")
            for m in [_TAG.match(part)] if m]
    if p_tag not in tags:
      return None  # outside the panel
    for t in tags[tags.index(p_tag) + 1:]:
      if t in child_tags:
        return child_tags[t]
    return ""  # parent-level glue

  src: dict[Any, dict] = {}  # var -> {source: direct}
  for v, kind in zip(jaxpr.invars, trace.invar_kind):
    src[v] = {kind: True} if kind else {}
  edges = set()

  def sources(v):
    if isinstance(v, jex_core.Literal):
      return {}
    return src.get(v, {})

  for eqn in jaxpr.eqns:
    who = owner(eqn)
    ins: dict = {}
    for v in eqn.invars:
      for s, direct in sources(v).items():
        ins[s] = ins.get(s, False) or direct
    if who is None:  # outside: what leaves here is an input of the panel ("in"), unless state
      out = {k: True for k in ins if k in ("memory", "mask")}
      if set(ins) - {"memory", "mask"}:
        out["in"] = True
    elif who == "":
      out = {k: False for k in ins}
    else:
      for s, direct in ins.items():
        if s != who:
          edges.add((s, who, direct))
      out = {who: True}
    for v in eqn.outvars:
      src[v] = out
  # the panel's outputs: values made inside it and used outside or returned
  made_inside = {}
  for eqn in jaxpr.eqns:
    who = owner(eqn)
    if who is None:
      for v in eqn.invars:
        if not isinstance(v, jex_core.Literal) and v in made_inside:
          for s, direct in src[v].items():
            edges.add((s, "out", direct))
    else:
      for v in eqn.outvars:
        made_inside[v] = True
  for v, kind in zip(jaxpr.outvars, trace.outvar_kind):
    if isinstance(v, jex_core.Literal) or not kind:
      continue
    for s, direct in sources(v).items():
      if kind == "memory" or parent == () or v in made_inside:
        edges.add((s, kind, direct))
  return {e for e in edges if e[0] != e[1]}


def panel_graph(trace: Trace, parent: tuple, max_param_lines: int = 6):
  """Nodes and edges of one panel: the children of ``parent`` in call order.

  Returns:
    ``(nodes, edges)``: nodes are dicts {id, label, kind}; edges are (src, dst, style, text)
    with style "solid" (passed unchanged), "dashed" (through glue operations) or "memory".
  """
  by_path = {c.path: c for c in trace.calls}
  root = by_path[parent]
  children = [c for c in trace.calls if len(c.path) == len(parent) + 1
              and c.path[:len(parent)] == parent]
  leaf_panel = not children
  if leaf_panel:  # a leaf module (e.g. MBAF): the panel shows the module itself
    children = [root]
  if parent:
    in_label = "inputs\n" + "\n".join(_fmt_shape(s) for s in root.in_shapes[:4])
  else:
    in_label = "batch\n" + "\n".join(
        f"{k} {', '.join(map(_fmt_shape, v)) if isinstance(v, list) else _fmt_shape(v)}"
        for k, v in trace.batch.items())
  nodes = [{"id": "in", "kind": "io", "label": in_label}]
  for c in children:
    label = [c.path[-1] if c.path else "model",
             c.cls + (f"  (called ×{c.calls})" if c.calls > 1 else "")]
    outs = [s for s in dict.fromkeys(c.out_shapes) if s]
    label.append("→ " + ", ".join(_fmt_shape(s) for s in outs[:3]))
    label.append(_fmt_count(trace.param_counts.get(c.path, 0)))
    has_children = any(len(d.path) > len(c.path) and d.path[:len(c.path)] == c.path
                       for d in trace.calls)
    if not has_children:
      for pname, pshape in list(trace.param_shapes.get(c.path, {}).items())[:max_param_lines]:
        label.append(f"  {pname} {_fmt_shape(pshape) if pshape else '()'}")
    nodes.append({"id": "/".join(c.path), "label": "\n".join(label),
                  "kind": "fusion" if c.path[-1:] == ("fusion",) else "module"})
  flow_parent = root.path[:-1] if leaf_panel else parent
  flow = data_flow(trace, flow_parent, [c.path for c in children])
  has_memory = any(o[:len(parent)] == parent for o in trace.memory)
  edges = []
  for s, d, direct in sorted(flow, key=lambda e: (e[0], e[1])):
    if s == "mask":
      continue
    if "memory" in (s, d):
      if has_memory:
        edges.append((s, d, "memory", "read" if s == "memory" else "write (train)"))
      continue
    edges.append((s, d, "solid" if direct else "dashed", ""))
  nodes.append({"id": "out", "kind": "io", "label": "outputs\n" + "\n".join(
      _fmt_shape(s) for s in dict.fromkeys(root.out_shapes) if s)})
  if has_memory:
    mem_lines = [f"{'/'.join(o[len(parent):] + (k,))} {_fmt_shape(s)}"
                 for o in trace.memory if o[:len(parent)] == parent
                 for k, s in trace.memory[o].items()]
    nodes.append({"id": "memory", "kind": "memory",
                  "label": "'memory' collection\n" + "\n".join(mem_lines) +
                           "\nwrite-then-carry: the new\nmemory (stop_gradient) is\n"
                           "read in the next step"})
  return nodes, edges


COL_W = 2.75  # inches between columns
ROW_H = 1.3  # inches between rows
COLORS = {"io": "#eeeeee", "module": "#dbe9f6", "fusion": "#fde3c8", "memory": "#e5f5e0"}
GREEN = "#2b8a3e"


def _merge_memory_edges(edges) -> list:
  """One "read + write (train)" arrow where a module both reads and writes the memory."""
  reads = {d for s, d, st, _ in edges if st == "memory" and s == "memory"}
  writes = {s for s, d, st, _ in edges if st == "memory" and d == "memory"}
  out = [e for e in edges if e[2] != "memory"]
  for n in sorted(reads | writes):
    if n in reads and n in writes:
      out.append(("memory", n, "memory_rw", "read + write (train)"))
    elif n in reads:
      out.append(("memory", n, "memory", "read"))
    else:
      out.append((n, "memory", "memory", "write (train)"))
  return out


def layout(nodes, edges) -> dict:
  """Positions in inches: columns by the longest data path from "in", rows in call order;
  the memory below the modules that use it (left of them when they share one column)."""
  ids = [n["id"] for n in nodes]
  col = {i: 0 for i in ids}
  for _ in range(len(ids)):
    for s, d, style, _ in edges:
      if not style.startswith("memory"):
        col[d] = max(col[d], col[s] + 1)
  rows: dict[int, list] = {}
  for i in ids:
    if i != "memory":
      rows.setdefault(col[i], []).append(i)
  pos = {}
  for c, members in rows.items():
    for r, i in enumerate(members):
      pos[i] = (c * COL_W, -(r - (len(members) - 1) / 2) * ROW_H)
  if "memory" in col:
    users = [d if s == "memory" else s for s, d, st, _ in edges if st.startswith("memory")]
    user_cols = sorted({col[u] for u in users}) or [1]
    c = user_cols[0] - 1 if len(users) > 1 and len(user_cols) == 1 else user_cols[0]
    bottom = min(y for _, y in pos.values())
    pos["memory"] = (max(c, 0) * COL_W, bottom - ROW_H * 1.1)
  return pos


def draw_panel(ax, nodes, edges, pos):
  """Draws one panel onto ``ax`` (data coordinates in inches)."""
  texts = {}
  for n in nodes:
    x, y = pos[n["id"]]
    texts[n["id"]] = ax.text(x, y, n["label"], ha="center", va="center", fontsize=6,
                             family="monospace", zorder=3,
                             bbox=dict(boxstyle="round,pad=0.35", fc=COLORS[n["kind"]],
                                       ec="#555555", lw=0.7))
  ax.figure.canvas.draw()  # places the box patches, so arrows can end at their outlines
  from matplotlib.patches import FancyArrowPatch  # pylint: disable=g-import-not-at-top
  for s, d, style, label in edges:
    props = dict(arrowstyle="-|>", lw=0.8, color="#333333", shrinkA=1, shrinkB=1,
                 connectionstyle="arc3,rad=0.0", mutation_scale=8, zorder=2)
    if style == "dashed":
      props.update(linestyle="--", color="#888888")
    elif style.startswith("memory"):
      props.update(color=GREEN, lw=1.0, connectionstyle="arc3,rad=0.12")
      if style == "memory_rw":
        props.update(arrowstyle="<|-|>")
    ax.add_patch(FancyArrowPatch(pos[s], pos[d], patchA=texts[s].get_bbox_patch(),
                                 patchB=texts[d].get_bbox_patch(), **props))
    if label:
      t = 0.62 if s == "memory" else 0.38  # closer to the module than to the memory box
      mx = pos[s][0] + t * (pos[d][0] - pos[s][0])
      my = pos[s][1] + t * (pos[d][1] - pos[s][1])
      ax.text(mx, my, label, fontsize=5.5, color=GREEN, ha="center", va="center", zorder=4,
              bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.85))
  ax.axis("off")


def draw(trace: Trace, path: str, dpi: int = 100) -> list:
  """Draws ``trace`` to the PNG ``path``: the model's top level and, below, the inside of its
  ``fusion`` module when that has submodules (a leaf fusion lists its parameters in its box).

  Returns:
    The module paths drawn as boxes ("/"-joined; both panels).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  panels = [(panel_graph(trace, ()), f"{trace.caption}: the model (one train-mode forward)")]
  if any(c.path[:1] == ("fusion",) and len(c.path) == 2 for c in trace.calls):
    panels.append((panel_graph(trace, ("fusion",)),
                   "inside 'fusion' (its parameters are the optimiser group \"memory\" of "
                   f"train/optimizers.py:param_labels; {trace.optim})"))
  laid = []
  for (nodes, edges), title in panels:
    edges = _merge_memory_edges(edges)
    pos = layout(nodes, edges)
    xs, ys = [p[0] for p in pos.values()], [p[1] for p in pos.values()]
    box = (min(xs) - 1.35, max(xs) + 1.35, min(ys) - 0.75, max(ys) + 0.75)
    laid.append((nodes, edges, pos, box, title))
  width = max(b[1] - b[0] for *_, b, _ in laid)
  title_h, foot_h = 0.3, 0.3
  heights = [b[3] - b[2] + title_h for *_, b, _ in laid]
  total = sum(heights) + foot_h
  fig = plt.figure(figsize=(width, total))
  top = total
  drawn = []
  for (nodes, edges, pos, box, title), h in zip(laid, heights):
    w_i, h_i = box[1] - box[0], box[3] - box[2]
    ax = fig.add_axes((0, (top - h) / total, w_i / width, h_i / total))
    ax.set_xlim(box[0], box[1])
    ax.set_ylim(box[2], box[3])
    draw_panel(ax, nodes, edges, pos)
    fig.text(0.01, (top - title_h * 0.6) / total, title, fontsize=8, va="center")
    top -= h
    drawn += [n["id"] for n in nodes if n["kind"] in ("module", "fusion")]
  fig.text(0.01, foot_h * 0.4 / total,
           "Boxes: module name, class, output shapes (B = batch), parameters. Solid arrow: an "
           "array returned by one module is passed on unchanged; dashed: through other operations; "
           "green: the 'memory' collection.\nThe batch mask reaches every module that needs it "
           "(not drawn). Generated from the module tree by scripts/draw_architecture.py.",
           fontsize=5.5, color="#555555", va="center")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  buf = io.BytesIO()
  fig.savefig(buf, dpi=dpi, format="png")
  plt.close(fig)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf.seek(0)
  # a 64-colour palette keeps the committed PNGs small (the figure has a handful of colours)
  Image.open(buf).convert("RGB").quantize(colors=64).save(path, optimize=True)
  return list(dict.fromkeys(drawn))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Command line; returns {figure name: {"png": path, "drawn": [...], "modules": [...]}}."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default=os.path.join(ROOT, "docs", "figures"), help="output folder")
  p.add_argument("--only", default="", help=f"comma list of {sorted(FIGURES)} (default: all)")
  p.add_argument("--variant", default="",
                 help="config variant added to every figure's config, e.g. 'demo' (small sizes)")
  p.add_argument("--print", action="store_true", help="print every module path of each model")
  args = p.parse_args(argv)
  names = [n for n in args.only.split(",") if n] or list(FIGURES)
  unknown = set(names) - set(FIGURES)
  if unknown:
    raise SystemExit(f"--only: unknown figure(s) {sorted(unknown)}; expected {sorted(FIGURES)}")
  result = {}
  for name in names:
    cfg, variant, caption = FIGURES[name]
    variant = ",".join(v for v in (variant, args.variant) if v)
    trace = trace_model(f"{cfg}:{variant}" if variant else cfg, name,
                        caption + (f" [{variant}]" if variant else ""))
    png = os.path.join(args.out, f"{name}.png")
    drawn = draw(trace, png)
    result[name] = {"png": png, "drawn": drawn, "modules": module_paths(trace)}
    print(f"{png}: {len(drawn)} boxes: {', '.join(drawn)}", flush=True)
    if args.print:
      for m in result[name]["modules"]:
        print(f"  {m or '<model>'}")
  return result


if __name__ == "__main__":
  main()
