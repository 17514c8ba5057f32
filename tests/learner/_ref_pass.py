"""DPO steps in a fresh process, with the live reference or with algo.precompute_ref_logps'
path (reference_logps on the batch, stored in the examples' meta, free_reference, then train);
prints JSON (used by test_reference_pass.py).

A fresh process per case: DeepSpeed's global state stays out of pytest; the peak is the
training steps' VmHWM (reset just before them).
"""

import argparse
import gc
import json
import weakref
from pathlib import Path

from _ds_step import examples

from lcray.config import load_config
from lcray.learner import PolicyLearner, reference_pass
from lcray.learner.distributed import destroy_process_group, free_port, init_process_group


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--precompute", action="store_true")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = load_config(None, [f"model.name_or_path={args.model}", "learner.learning_rate=0.001", *args.overrides])
    init_process_group(0, 1, "127.0.0.1", free_port())
    learner = PolicyLearner(cfg, total_steps=args.steps)
    ref_mb = sum(t.numel() * t.element_size() for t in learner.ref.parameters()) / 2**20
    batch = examples(learner.tokenizer, cfg.learner.train_batch_size)
    ref_gone = None
    if args.precompute:
        ref = weakref.ref(learner.ref)
        for example, value in zip(batch, learner.reference_logps(batch)):
            example.meta[reference_pass.KEY] = value
        learner.free_reference()
        gc.collect()
        ref_gone = ref() is None and learner.ref is None
    # The training phase's own high-water mark: reset VmHWM here (Linux: "5" > clear_refs), so a
    # one-off peak before it (a first DeepSpeed op build in a fresh clone) cannot hide the saving.
    Path("/proc/self/clear_refs").write_text("5")
    metrics = [learner.train_step(batch) for _ in range(args.steps)]
    status = Path("/proc/self/status").read_text()
    peak_mb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024
    # DeepSpeed also prints to stdout: tag the result line.
    print("RESULT " + json.dumps({"metrics": metrics, "ref_gone": ref_gone, "ref_mb": ref_mb, "peak_mb": peak_mb}))
    destroy_process_group()


if __name__ == "__main__":
    main()
