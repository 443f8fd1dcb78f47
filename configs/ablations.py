r"""MBAF ablations on MBAF-III / IEMOCAP (MBAF §6): memory size, cross-attention read, single-mode
memory.

  python -m train.main --config=configs/ablations.py:slots=50 --workdir=runs/abl_l50     (Table 4)
  python -m train.main --config=configs/ablations.py:cross,slots=20 --workdir=runs/abl_ca (Table 6)
  python -m train.main --config=configs/ablations.py:single=0 --workdir=runs/abl_single  (Eq. 13)
  python -m train.main --config=configs/ablations.py:dmf_slots=60 --workdir=runs/dmf_l60 (DMF
      memory size on configs/iemocap.py)

Arguments: slots=<l> (10, 20, 30, 40, 50, 100 in the paper), cross (read with cross-attention,
Eqs. 11–12), single=<0|1> (memory on mode i only, Eq. 13, slots 30 as in §6.3), dmf_slots=<n>,
demo, smoke.
"""
from configs import common
from mbaf_jax.errors import UserError
from configs import iemocap
from configs import iemocap_mbaf


def get_config(arg=None):
  """Returns an ablation config; ``arg`` e.g. ``"cross,slots=20"``."""
  opts = common.parse_arg(arg, ("cross", "demo", "smoke"),
                          {"slots": int, "single": int, "dmf_slots": int})
  size = ",".join(sorted(opts.keys() & {"demo", "smoke"}))
  if "dmf_slots" in opts:
    c = iemocap.get_config(size or None)
    c.model.fusion.dmf.slots = opts["dmf_slots"]
    c.name = f"ablation_dmf_slots{opts['dmf_slots']}"
    return c
  c = iemocap_mbaf.get_config(",".join(filter(None, ["III", size])))
  m = c.model.fusion.mbaf
  m.slots = opts.get("slots", 30)  # MBAF §6.1 sweep; §6.3 uses 30
  name = [f"slots{m.slots}"]
  if "cross" in opts:
    m.read = "cross"  # MBAF Eqs. 11–12
    name.append("cross")
  if "single" in opts:
    if opts["single"] not in (0, 1):
      raise UserError(f"config variant single={opts['single']}: expected 0 (audio) or 1 (text) "
                      "(MBAF Eq. 13).")
    m.memory_modes = (opts["single"],)  # MBAF Eq. 13: the memory fuses mode i only
    name.append(f"single{opts['single']}")
  c.name = "ablation_mbaf_" + "_".join(name)
  return c
