#!/usr/bin/env python
"""SoLoPO: short-to-long preference optimization, online (sample -> score -> train -> sync).

    python recipes/solopo.py                                  # the demo: embedded Ray, SmolLM2 on CPU
    python recipes/solopo.py --config recipes/solopo.yaml algo.loss_type=dpo algo.solo_ra.alpha=3
    ray job submit --address http://HEAD:8265 --working-dir . \\
        -- python recipes/solopo.py --config recipes/qwen2.5-7b-solopo.yaml

Every config key can be overridden as key=value (see `--help`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from _bootstrap import bootstrap

bootstrap()

from lcray.config import parse_cli  # noqa: E402
from lcray.trainers.solopo import SoLoPOTrainer  # noqa: E402

DEFAULT_CONFIG = Path(__file__).with_name("solopo.yaml")


def print_summary(s: dict) -> None:
    b, a = s["eval_before"], s["eval_after"]
    print("\n=== SoLoPO summary ===")
    print(
        f"{s['workload']}: steps: {s['steps']}   pairs: {s['pairs']} from {s['prompts']} prompts "
        f"({s['prompts_with_pair']} had a correct/incorrect contrast; {s['samples']} samples)"
    )
    print(
        f"long-context sub-EM:  {b.get('sub_em_long', float('nan')):.3f} -> {a['sub_em_long']:.3f}   "
        f"(held-out, rho ~ {s['mean_rho']:.2f})"
    )
    print(f"short-context sub-EM: {b.get('sub_em_short', float('nan')):.3f} -> {a['sub_em_short']:.3f}")
    print(f"TensorBoard logs:     {s['tensorboard']}   (tensorboard --logdir {s['tensorboard']})")
    print(f"final HF model:       {s['final_model']}")


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_cli(argv, default_config=DEFAULT_CONFIG, description=__doc__)
    summary = SoLoPOTrainer(cfg).run()
    print_summary(summary)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
