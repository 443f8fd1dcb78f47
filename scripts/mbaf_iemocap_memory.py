r"""Device memory of the MBAF IEMOCAP train step at paper size, from XLA's compile-time
``memory_analysis()`` (compiled, never run): how ``window_chunk`` / ``remat`` of the SincNet
encoder bound it (configs/iemocap_mbaf.py).

  python -m scripts.mbaf_iemocap_memory --chunk 512 --remat          # the config's setting
  python -m scripts.mbaf_iemocap_memory --chunk 0                    # whole utterances
  python -m scripts.mbaf_iemocap_memory --variant II,nf --chunk 512 --remat

Prints arguments / outputs / temporaries and the peak estimate (arguments + outputs + temporaries
− donated aliases) in GiB. On CPU this takes ~30 s and ~2 GiB of host memory; nothing is
allocated at the reported sizes.
"""
import argparse
import time

import jax
import numpy as np

from configs import iemocap_mbaf
from mbaf_jax.models import factory
from train import optimizers
from train import steps


def estimate(variant: str, chunk: int, remat: bool, vocab_size: int, batch_size: int = 0):
  """Returns ``(num_params, memory_analysis)`` of the compiled train step (state donated)."""
  c = iemocap_mbaf.get_config(variant)
  c.model.audio.kwargs.window_chunk = chunk or None
  c.model.audio.kwargs.remat = remat
  kind = c.fusions.split(",")[0]
  model, _ = factory.build_model(c.model, kind, vocab_size=vocab_size,
                                 max_tokens=c.data.max_tokens)
  b = batch_size or c.train.batch_size
  batch = dict(factory.dummy_batch(c.data, c.model, b), mask=np.ones((b,), bool),
               label=np.zeros((b,), np.int32))
  key = jax.random.key(0)
  shapes = steps.abstract_variables(model, batch, key)
  tx = optimizers.make_optimizer(c.optim, shapes["params"], shapes.get("memory", {}))
  inputs = {k: v for k, v in batch.items() if k not in ("mask", "label")}
  state = jax.eval_shape(lambda: steps.create_state(dict(model.init(
      {"params": key, "memory": key, "dropout": key}, inputs, mask=batch["mask"])), tx))
  sds = lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
  step = jax.jit(steps.make_train_step(model.apply, tx), donate_argnums=(0,))
  compiled = step.lower(state, jax.tree.map(sds, batch), jax.random.key(1)).compile()
  return sum(x.size for x in jax.tree.leaves(state.params)), compiled.memory_analysis()


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--variant", default="III", help="configs/iemocap_mbaf.py variant (I/II/III[,nf])")
  p.add_argument("--chunk", type=int, default=512, help="window_chunk (0: whole utterances)")
  p.add_argument("--remat", action="store_true", help="rematerialise the per-window network")
  p.add_argument("--vocab_size", type=int, default=3500, help="text vocabulary (IEMOCAP ~3.5k)")
  p.add_argument("--batch_size", type=int, default=0, help="0: the config's (64)")
  a = p.parse_args()
  t0 = time.time()
  n, m = estimate(a.variant, a.chunk, a.remat, a.vocab_size, a.batch_size)
  gib = 2.0 ** 30
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes)
  print(f"variant={a.variant} chunk={a.chunk} remat={a.remat}: {n / 1e6:.1f} M params, "
        f"arguments {m.argument_size_in_bytes / gib:.2f} GiB, outputs "
        f"{m.output_size_in_bytes / gib:.2f} GiB, temporaries {m.temp_size_in_bytes / gib:.2f} "
        f"GiB, donated {m.alias_size_in_bytes / gib:.2f} GiB -> peak ~{peak / gib:.2f} GiB "
        f"(compiled in {time.time() - t0:.0f} s)")


if __name__ == "__main__":
  main()
