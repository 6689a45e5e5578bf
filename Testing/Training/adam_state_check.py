"""Whether a training checkpoint's Adam states are sane: per optimiser, the largest first and second moments and any
non-finite entry, per parameter tensor (numbered in the network's parameter order).

Used to show what the oneDNN bf16 bug did to the paper's D (``docs/evaluation/bf16_cpu/``): the second moment of its
last convolution's weights (D's parameter 12) was already inf after 50 bf16 iterations.

    python Testing/Training/adam_state_check.py RUN_DIR/ckpt_s00_it000000050.pt [--top 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from MedSynthLogic.checkpoint import load_checkpoint  # noqa: E402


def optimiser_states(tree: object, path: str = ""):
    """(path, state dict) of every optimiser state_dict in a checkpoint (a dict with "state" and "param_groups")."""
    if isinstance(tree, dict):
        if "state" in tree and "param_groups" in tree:
            yield path, tree["state"]
            return
        for key, value in tree.items():
            yield from optimiser_states(value, f"{path}/{key}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--top", type=int, default=3, help="also list this many tensors with the largest second moment")
    args = p.parse_args()
    for ckpt in args.checkpoints:
        for path, state in optimiser_states(load_checkpoint(ckpt)):
            rows = []
            for index, s in state.items():
                if "exp_avg_sq" not in s:
                    continue
                m, v = s["exp_avg"].double(), s["exp_avg_sq"].double()
                finite = bool(torch.isfinite(m).all() and torch.isfinite(v).all())
                rows.append((float(v.max()), int(index), float(m.abs().max()), finite, tuple(v.shape)))
            bad = [r for r in rows if not r[3]]
            print(f"{ckpt} {path}: {len(rows)} tensors, {len(bad)} with a non-finite moment")
            shown = {r[1]: r for r in bad + sorted(rows, reverse=True)[: args.top]}
            for v_max, index, m_max, finite, shape in sorted(shown.values(), key=lambda r: r[1]):
                print(f"  parameter {index} {shape}: max |exp_avg| {m_max:.3g}, max exp_avg_sq {v_max:.3g}, finite {finite}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
