"""Shared config sections for every experiment (ml_collections, big_vision style).

Values the papers give are marked with their source; values they do not give are marked
"not in paper". Variants (``file.py:demo``) shrink a config for a quick run.
"""
import ml_collections as mlc

from mbaf_jax.errors import UserError


# How each value type is written in a variant (``key=<this>``) and an example of it.
_TYPE_WORDS = {int: ("an integer", "30"), float: ("a number", "0.5"), bool: ("true or false", "true"),
               str: ("a string", "name")}
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _typed(key: str, text: str, kind: type):
  """``text`` as a value of ``kind`` (int, float, bool or str) for variant ``key=text``.

  Raises:
    UserError: (a ValueError) when ``text`` is not a ``kind``.
  """
  word, example = _TYPE_WORDS[kind]
  try:
    if kind is bool:
      return _BOOLS[text.lower()]
    return kind(text)
  except (KeyError, ValueError):
    raise UserError(f"config variant {key}={text!r}: {key} needs {word}, e.g. "
                    f"--config=configs/<file>.py:{key}={example}.") from None


def parse_arg(arg, allowed, values=None) -> dict:
  """Parses a config file's variant string, ``"demo,naive"`` or ``"cross,slots=20"``.

  Every ``configs/*.py`` parses its ``:variant`` argument with this one function.

  Args:
    arg: the string after ``file.py:`` (None or "" for none): comma-separated parts, each a
      variant name or ``key=value``; blanks around parts are ignored.
    allowed: the variant names the config accepts (parts without ``=``).
    values: ``{key: type}`` of the ``key=value`` parts it accepts; type is int, float, bool
      (true/false, 1/0, yes/no) or str. None: none.

  Returns:
    ``{name: True}`` for every variant name given and ``{key: typed value}`` for every
    ``key=value`` (a repeated key: the last one), so ``"demo" in parsed`` and
    ``parsed.get("slots", 30)`` read it.

  Raises:
    UserError: (a ValueError) for an unknown name or key, or a value of the wrong type.
  """
  values = dict(values or {})
  accepted = sorted(allowed) + [f"{k}=<{t.__name__}>" for k, t in values.items()]
  out, unknown = {}, []
  for part in (p.strip() for p in (arg or "").split(",")):
    if not part:
      continue
    key, eq, text = part.partition("=")
    key, text = key.strip(), text.strip()
    if not eq and key in allowed:
      out[key] = True
    elif eq and key in values:
      out[key] = _typed(key, text, values[key])
    else:
      unknown.append(part)
  if unknown:
    raise UserError(f"unknown config variant(s) {sorted(unknown)}; this config accepts "
                    f"{accepted} (e.g. --config=configs/iemocap.py:demo).")
  return out


def fusion_kinds(config) -> list:
  """The fusion kinds a run trains: ``config.fusions`` ("dmf", "mbaf,naive", …) split on commas,
  blanks dropped, in order ([] when unset or empty)."""
  return [k.strip() for k in str(config.get("fusions", "") or "").split(",") if k.strip()]


def dmf_fusion():
  """DualMemoryFusion options (DMF §2.2)."""
  return mlc.ConfigDict(dict(
      slots=120,  # DMF §2.2: n_a = n_t = 120
      cbp_dim=2048,  # not in paper (CBP output dim)
      tau_max=10.0,  # DMF Eq. 1
      num_heads=8,  # not in paper
      writer_ff_dim=2048,  # not in paper (PyTorch TransformerEncoderLayer default)
      dropout_rate=0.0,  # not in paper
      attention_tokens=16,  # not in paper (composer self-attention tokens)
      composer_attention="tokens",  # not in paper: "tokens" (self-attention) | "none" (ablation)
      similarity_reduction="paper",  # DMF Eq. 4 divisor n(n-1)
      reader_logits="log_softmax",  # reading of DMF Eq. 2's log(x_tmp)
      # Where Eq. 4's gradient goes: "writer" (DMF §2.3 "to train the writer sub-module": the
      # writer's inputs are stop-gradient) | "all" (also into the encoders through them)
      similarity_grad="writer",
      similarity_weight=1.0,  # DMF Eq. 4: weight of the similarity term (0: off, an ablation)
  ))


def mbaf_fusion():
  """MBAF layer options (MBAF §3); the defaults of mbaf_jax.fusion.MBAF apply to anything unset."""
  return mlc.ConfigDict(dict(
      slots=30,  # MBAF Table 4: best WA at memory size l = 30 (UA ties 20/30)
      # Reading of MBAF Eqs. 5-6: "keys" (learned attentive vectors; Table 3's parameter count;
      # the memory stays bounded) | "feature" | "none" (both unbounded: use with write_max)
      attention="keys",
      attention_keys=32,  # MBAF Table 3: as many attentive vectors as the batch size q
      # Not in paper: a cap of Eq. 7's ReLU (a ReLU-n), e.g. 6.0; None = the paper's ReLU.
      # Needed only by the unbounded readings (docs/PAPER_NOTES.md, "MBAF memory growth").
      write_max=None,
  ))


def fusion_section():
  """Options of every fusion kind; a run uses those of the kinds in ``config.fusions``."""
  return mlc.ConfigDict(dict(
      dmf=dmf_fusion(),  # DualMemoryFusion (DMF §2.2)
      naive=mlc.ConfigDict(),  # NaiveFusion (concatenation) has no options
      mbaf=mbaf_fusion(),  # MBAF (MBAF §3)
  ))


def base_config():
  """Fields shared by every experiment; experiment files fill in the rest."""
  c = mlc.ConfigDict()
  c.name = ""  # the experiment's name (metrics.json); set by each config file
  c.seed = 0  # PRNG seed of initialisation, batch order, dropout and Gumbel noise
  c.fusions = "dmf"  # comma-separated fusion kinds, each trained on every fold ("dmf,naive")

  c.data = mlc.ConfigDict()
  c.data.dataset = "iemocap"  # "iemocap" | "cebs" | "manifest" (your own CSV/JSONL data)
  c.data.data_dir = ""  # IEMOCAP_full_release (or its parent) / cebsdb directory / manifest file
  c.data.synthetic = False  # generate the synthetic corpus into data_dir when it is absent
  c.data.synthetic_size = "demo"  # size argument of mbaf_jax.data.synthetic.write_*
  c.data.protocol = "loso"  # "loso" | "8:1:1" | "logo" | "group" (manifest: grouped k-fold)
  c.data.validation = "speaker"  # LOSO validation: "speaker" | "random20"
  c.data.max_folds = 0  # 0: every fold; n: the first n (quick runs)
  c.data.max_examples = 0  # 0: all; n: a stratified subset (quick runs)
  c.data.strict = False  # True: every skipped or unmatched item of the data set is an error
  c.data.max_seconds = 5.0  # DMF §2.1: first 5 s of audio
  c.data.sample_rate = 16000  # DMF §2.1 / MBAF §4.1
  c.data.max_tokens = 30  # DMF §2.1: 30 tokens
  c.data.tokenizer = ""  # local tokenizer dir; "": the text encoder's pretrained dir, else a
  #                         word-level vocab built from the training transcripts into the workdir
  c.data.cache_dir = ""  # decoded-audio cache ("": <workdir>/cache)
  c.data.mode_pair = "F-IV"  # CEBS: F-IV (ECG+RS), F-V (ECG+SCG), F-VI (RS+SCG)
  c.data.chunks = 6  # CEBS: 6 chunks per sample (MBAF §4.2)
  c.data.chunk_samples = 1000  # CEBS: 200 ms at 5 kHz
  c.data.class_names = ""  # manifest: comma-separated class order ("": sorted label values)
  c.data.num_groups = 5  # manifest: folds of the grouped cross-validation (over its group column)

  c.model = mlc.ConfigDict()
  c.model.name = "dmf"  # "dmf" | "mbaf_iemocap" | "cebs"
  c.model.fusion = fusion_section()  # options of each fusion kind (dmf, naive, mbaf)
  c.model.head_features = (1024, 512)  # DMF §2.3: Dense 1024 → Dense 512 → classes
  c.model.head_dropout = 0.0  # dropout in the head; not in paper (DMF)
  c.model.head_activation = "relu"  # not in paper
  c.model.num_classes = 4  # DMF §3: ang, hap (+exc), neu, sad
  # Compute dtype: "float32" | "bfloat16" (encoders, fusion and head compute in it; parameters,
  # optimiser state, memory and the loss stay float32). --config.model.dtype=bfloat16
  c.model.dtype = "float32"

  c.optim = mlc.ConfigDict()
  c.optim.name = "sgd"  # the optax optimiser, optax.<name>: "sgd" (DMF §3) | "adam" (MBAF §4) | …
  c.optim.kwargs = mlc.ConfigDict()  # its other arguments ({}: optax's defaults; not in paper),
  #                                     e.g. --config.optim.kwargs='{"momentum": 0.9}'
  c.optim.learning_rate = 0.01  # DMF §3: the network (all but the memory module)
  c.optim.memory_learning_rate = 0.001  # the fusion ("memory module") parameters (any optimiser)
  c.optim.freeze_encoders = True  # DMF §2.1 frozen parts (encoders.frozen_mask)
  c.optim.grad_clip_norm = 0.0  # 0: off; not in paper

  c.train = mlc.ConfigDict()
  c.train.batch_size = 16  # global batch (all devices); not in paper (DMF)
  c.train.eval_batch_size = 32  # evaluation batch (all devices); not in paper
  c.train.epochs = 10  # passes over each fold's training set; not in paper
  c.train.max_steps = 0  # 0: epochs decide; n: stop each fold after n steps
  c.train.eval_every_epochs = 1  # validation (for best-by-UA) every n epochs
  c.train.log_every_steps = 50  # TensorBoard training scalars every n steps
  c.train.checkpoint_every_steps = 200  # "latest" checkpoint every n steps (resume point)
  c.train.keep_checkpoints = 2  # keep-N
  c.train.num_devices = 0  # 0: all local devices; n: the first n (data parallel mesh)
  c.train.parallelism = "jit"  # "jit": sharded device mesh | "pmap": jax.pmap (docs/SCALING.md)
  c.train.progress = True  # progress with steps/s and ETA: a tqdm bar on a terminal, else lines
  # Train the fusion kinds of a run ("dmf,naive") at the same time, one thread each (one process
  # only); same results as one after the other. False: one after the other.
  c.train.concurrent_kinds = True
  # True: delete the workdir's previous run (checkpoints, metrics, TensorBoard events,
  # config.json; train.checkpoints.prepare_workdir) and start afresh
  c.train.restart = False
  return c


def shrink_for_demo(c, smoke=False):
  """Demo / smoke sizes: synthetic corpus, tiny random-init encoders, few steps."""
  c.data.synthetic = True
  c.data.synthetic_size = "demo"
  c.data.max_seconds = 1.0
  c.data.max_tokens = 16
  c.train.batch_size = 16
  c.train.eval_batch_size = 32
  c.train.epochs = 6
  c.train.log_every_steps = 10
  c.train.checkpoint_every_steps = 1000
  c.model.head_features = (64, 32)
  f = c.model.fusion
  f.dmf.slots = 16
  f.dmf.cbp_dim = 128
  f.dmf.num_heads = 4
  f.dmf.writer_ff_dim = 64
  f.dmf.attention_tokens = 4
  f.mbaf.slots = 8
  if smoke:
    c.data.max_folds = 2
    c.data.max_examples = 80
    c.train.epochs = 1
    c.train.max_steps = 3
    c.train.progress = False
  return c
