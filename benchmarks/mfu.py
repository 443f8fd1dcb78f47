"""Model FLOP utilisation: a benchmark record's XLA FLOP rate over the device's spec peak.

``benchmarks/run_gpu.sh`` runs this over ``bench_train.py``'s lines (which carry ``gflop`` from
XLA's cost analysis and ``median_ms``) and writes them again with ``spec_peak_tflops`` and
``mfu`` = ``gflop / median_s / spec peak``. The peaks are the vendors' datasheet figures for
dense matrix math (no structured sparsity), keyed by ``jax.devices()[0].device_kind``.

A float32 row is set against the TF32 tensor-core peak: XLA's default precision for a float32
matmul on these GPUs is TF32 (``jax.default_matmul_precision`` unset); ``mfu_fp32`` gives the
same rate over the plain FP32 (non-tensor-core) peak.

    python -m benchmarks.mfu results/bench_train.jsonl > results/train_mfu.jsonl
"""
import argparse
import json

# device_kind substring -> dense TFLOP/s per GPU (NVIDIA datasheets). First match wins, so the
# more specific names (PCIe, NVL) come before the family name.
SPEC_PEAK_TFLOPS = (
    ("H200 NVL", {"bfloat16": 835.0, "tf32": 417.5, "float32": 60.0}),
    ("H200", {"bfloat16": 989.4, "tf32": 494.7, "float32": 66.9}),
    ("H100 PCIe", {"bfloat16": 756.5, "tf32": 378.0, "float32": 51.2}),
    ("H100 NVL", {"bfloat16": 835.0, "tf32": 417.5, "float32": 60.0}),
    ("H100", {"bfloat16": 989.4, "tf32": 494.7, "float32": 66.9}),
    ("A100", {"bfloat16": 312.0, "tf32": 156.0, "float32": 19.5}),
)


def spec_peak_tflops(device_kind: str, dtype: str) -> float | None:
  """The datasheet peak for ``dtype`` on ``device_kind``.

  Args:
    device_kind: ``jax.devices()[0].device_kind`` (or a record's ``device``, which starts with
      it), e.g. ``"NVIDIA H100 80GB HBM3"``.
    dtype: ``"bfloat16"``, ``"float32"`` (matmuls run as TF32: the TF32 peak) or ``"tf32"``.

  Returns:
    TFLOP/s, or None for a device not in :data:`SPEC_PEAK_TFLOPS` (e.g. a CPU).

  Example:
    >>> spec_peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16")
    989.4
    >>> spec_peak_tflops("cpu (x86_64, 2 cores) x1", "float32") is None
    True
  """
  for name, peaks in SPEC_PEAK_TFLOPS:
    if name in device_kind:
      return peaks["tf32" if dtype == "float32" else dtype]
  return None


def add_mfu(rec: dict) -> dict:
  """Adds ``spec_peak_tflops``, ``mfu`` (and ``mfu_fp32`` for float32) to a record.

  Args:
    rec: a benchmark record with ``device``, ``dtype``, ``median_ms`` and ``gflop``.

  Returns:
    ``rec`` (updated in place); the new keys are None where the device has no known peak or the
    record has no FLOP count.
  """
  peak = spec_peak_tflops(str(rec.get("device", "")), str(rec.get("dtype", "")))
  rec["spec_peak_tflops"] = peak
  rec["mfu"] = None
  gflop, ms = rec.get("gflop"), rec.get("median_ms")
  if peak and gflop and ms:
    tflops = gflop / (ms * 1e-3) / 1e3
    rec["mfu"] = round(tflops / peak, 4)
    if rec.get("dtype") == "float32":
      rec["mfu_fp32"] = round(tflops / _fp32_peak(rec["device"]), 4)
  return rec


def _fp32_peak(device_kind: str) -> float:
  """The plain FP32 (non-tensor-core) datasheet peak of a listed device, TFLOP/s."""
  for name, peaks in SPEC_PEAK_TFLOPS:
    if name in device_kind:
      return peaks["float32"]
  raise KeyError(device_kind)


def main(argv=None) -> None:
  """Reads JSON lines from the files named on the command line (``argv``) and prints them with
  the MFU keys added."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("files", nargs="+", help="JSON-lines files (e.g. bench_train.jsonl)")
  for path in p.parse_args(argv).files:
    with open(path, encoding="utf-8") as f:
      for line in f:
        line = line.strip()
        if not line.startswith("{"):
          continue
        rec = json.loads(line)
        if rec.get("bench") != "_run":
          rec = add_mfu(rec)
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
  main()
