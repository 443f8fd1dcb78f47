"""MBAF encoders at the paper's sizes: SincNet+DCNN audio, CNN/Bi-RNN text, CEBS LSTM.

One JSON line per measurement (forward, and forward+backward of a sum-of-squares loss):

* ``sincnet_windows``: 64 windows of 250 ms (the AE pre-training batch, MBAF §4.1: batch 64);
* ``sincnet_utterance``: utterances of ``--seconds`` s framed every 10 ms, masked mean (2,048-d);
* ``text_cnn_rnn``: batch 64 × 100 tokens, GloVe-300d, 4,800-d;
* ``cebs_lstm``: batch 32 × 6 chunks × 1,000 samples, LSTM(512) → LSTM(512).

    python -m benchmarks.bench_mbaf_encoders                # paper sizes (slow on CPU)
    python -m benchmarks.bench_mbaf_encoders --quick        # tiny sizes, a smoke check
    python -m benchmarks.bench_mbaf_encoders --dtype bfloat16
"""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from mbaf_jax.encoders.lstm import LSTMEncoder
from mbaf_jax.encoders.sincnet import SincNetAudioEncoder
from mbaf_jax.encoders.text_cnn_rnn import CnnRnnTextEncoder


def _cases(args):
  """(name, module, example inputs, items, shape) at paper sizes or ``--quick`` tiny sizes."""
  dt = jnp.dtype(args.dtype)
  key = jax.random.key(0)
  if args.quick:
    sinc = SincNetAudioEncoder(window=400, shift=100, sinc_filters=8, sinc_kernel=51,
                               conv_features=(6,), conv_kernels=(5,), dense_features=(32,),
                               dtype=dt)
    win_b, utt_b, samples = 4, 2, 1000
    text = CnnRnnTextEncoder(vocab_size=50, embed_dim=16, max_tokens=12, rnn_hidden=8,
                             conv_features=8, output_dim=48, dtype=dt,
                             glove=np.zeros((50, 16), np.float32))
    text_b, tokens = 4, 12
    lstm, lstm_b, steps, feats = LSTMEncoder(hidden=16, dtype=dt), 4, 6, 50
  else:
    sinc = SincNetAudioEncoder(dtype=dt, window_chunk=args.window_chunk)
    win_b, utt_b, samples = 64, args.utterances, int(args.seconds * 16000)
    text = CnnRnnTextEncoder(vocab_size=args.vocab, dtype=dt,
                             glove=np.zeros((args.vocab, 300), np.float32))
    text_b, tokens = 64, 100
    lstm, lstm_b, steps, feats = LSTMEncoder(dtype=dt), 32, 6, 1000
  windows = jax.random.normal(key, (win_b, 1, sinc.window))
  waves = jax.random.normal(key, (utt_b, samples))
  ids = jax.random.randint(key, (text_b, tokens), 1, text.vocab_size)
  chunks = jax.random.normal(key, (lstm_b, steps, feats))
  n_win = (max(samples, sinc.window) - sinc.window) // sinc.shift + 1
  return [
      ("sincnet_windows", sinc, (windows,), SincNetAudioEncoder.encode_windows, win_b,
       {"batch": win_b, "window": sinc.window}),
      ("sincnet_utterance", sinc, (waves,), None, utt_b,
       {"batch": utt_b, "samples": samples, "windows": n_win}),
      ("text_cnn_rnn", text, (ids,), None, text_b, {"batch": text_b, "tokens": tokens}),
      ("cebs_lstm", lstm, (chunks,), None, lstm_b, {"batch": lstm_b, "steps": steps,
                                                     "features": feats}),
  ]


def main():
  p = common.parser("MBAF encoders forward / forward+backward")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--seconds", type=float, default=2.0,
                 help="utterance length (s) for sincnet_utterance")
  p.add_argument("--utterances", type=int, default=8, help="batch of sincnet_utterance")
  p.add_argument("--window_chunk", type=int, default=512, help="windows per scan step (memory)")
  p.add_argument("--vocab", type=int, default=3000, help="text vocabulary size")
  p.add_argument("--only", default=None, help="comma-separated bench names to run")
  args = p.parse_args()
  warmup, iters = common.iterations(args)
  peak = common.matmul_peak_gflops(quick=args.quick)
  only = set(args.only.split(",")) if args.only else None
  for name, mdl, inputs, method, items, shape in _cases(args):
    if only and name not in only:
      continue
    variables = jax.jit(lambda k, *x: mdl.init(k, *x, method=method))(jax.random.key(1), *inputs)
    fwd = lambda v, *x: mdl.apply(v, *x, method=method)
    loss = lambda v, *x: jnp.sum(jnp.square(fwd(v, *x).astype(jnp.float32)))
    bwd = jax.grad(loss)
    for mode, fn in (("forward", fwd), ("forward_backward", bwd)):
      rec = common.measure(f"{name}_{mode}", fn, (variables, *inputs), items=items, shape=shape,
                           dtype=args.dtype, peak_gflops=peak, warmup=warmup, iters=iters,
                           extra={"params": int(sum(x.size for x in
                                                    jax.tree_util.tree_leaves(variables)))})
      common.emit(rec)


if __name__ == "__main__":
  main()
