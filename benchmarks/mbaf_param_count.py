"""MBAF parameter count: the layer's actual count beside the paper's Eq. 10 and Table 3.

The count comes from ``jax.eval_shape`` of ``init`` (no memory allocated), so the
IEMOCAP size (l = 6,848) is instant. For each size it prints one JSON line with the
default layer's count, the ``TABLE3_LAYOUT`` layer's count, Eq. 10 and the MBAF − NF
difference read off Table 3.

    python -m benchmarks.mbaf_param_count [--quick]
"""
import argparse
import json

from mbaf_jax.fusion import mbaf

# (case, mode dims, batch q, Table 3 MBAF params, Table 3 NF params)
CASES = [("F-IV-VI (CEBS)", (512, 512), 32, 14_628_867, 11_448_323),
         ("F-I (IEMOCAP)", (2048, 4800), 64, 157_550_146, 16_385_470),
         ("F-III (IEMOCAP)", (2048, 4800), 64, 184_791_298, 43_654_018)]


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="only the CEBS size")
  args = p.parse_args()
  for case, dims, q, t_mbaf, t_nf in (CASES[:1] if args.quick else CASES):
    l = sum(dims)
    default = mbaf.mbaf_parameter_count(*dims, slots=30)
    table3 = mbaf.mbaf_parameter_count(*dims, slots=30, attention_keys=q, **mbaf.TABLE3_LAYOUT)
    print(json.dumps({
        "bench": "mbaf_param_count", "case": case, "dims": list(dims), "l": l, "batch_q": q,
        "code_default": default, "code_default_formula": "4l^2 + (1 + K)l, K = attention_keys = 32",
        "code_table3_layout": table3, "table3_layout_fields": dict(mbaf.TABLE3_LAYOUT,
                                                                   attention_keys=q),
        "paper_eq10": mbaf.paper_eq10(l, q),
        "paper_table3_mbaf_minus_nf": t_mbaf - t_nf,
        "table3_formula_3l2_q2l": mbaf.paper_table3_difference(l, q),
        "table3_layout_matches_table3": table3 == t_mbaf - t_nf,
        "table3_residual": (t_mbaf - t_nf) - table3,
        "table3_layout_minus_eq10": table3 - mbaf.paper_eq10(l, q),
        "memory_state_not_params": 30 * l}), flush=True)


if __name__ == "__main__":
  main()
