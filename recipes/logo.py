#!/usr/bin/env python
"""LOGO: long-context alignment from positional-index-synthesized preference data (offline).

    python recipes/logo.py                            # embedded Ray, small defaults, minutes on CPU
    python recipes/logo.py algo.logo.num_negatives=3 data.target_len=16384
    ray job submit --address http://HEAD:8265 --working-dir . \\
        -- python recipes/logo.py --config recipes/llama3-8b-logo.yaml

Builds the data (if missing) under logo_data.output_dir, then trains. Every config key can be
overridden as key=value (see `--help`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from _bootstrap import bootstrap

bootstrap()

from lcray.config import parse_cli  # noqa: E402
from lcray.trainers.logo import LOGOTrainer  # noqa: E402

DEFAULT_CONFIG = Path(__file__).with_name("logo.yaml")


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_cli(argv, default_config=DEFAULT_CONFIG, description=__doc__)
    s = LOGOTrainer(cfg).run()
    b, a = s["eval_before"], s["eval_after"]
    print("\n=== LOGO summary ===")
    print(
        f"steps: {s['steps']}   training examples: {s['examples']} "
        f"(chosen + {cfg.algo.logo.num_negatives} rejected each)"
    )
    print(
        f"long-context sub-EM:  {b.get('sub_em_long', float('nan')):.3f} -> {a['sub_em_long']:.3f}   "
        f"short: {b.get('sub_em_short', float('nan')):.3f} -> {a['sub_em_short']:.3f}"
    )
    print(f"data: {Path(cfg.logo_data.output_dir).resolve()}   TensorBoard: {s['tensorboard']}")
    print(f"final HF model: {s['final_model']}")
    return s


if __name__ == "__main__":
    main(sys.argv[1:])
