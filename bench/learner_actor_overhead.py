"""Ray-actor train step vs the same step in-process (issue goal: <= 1.1x).

Same model, config and batches; the actor path adds Ray scheduling, pickling the batch into
the object store and the metrics round trip. Prints median step times and their ratio.

    python bench/learner_actor_overhead.py [--steps 8] [--prompt-tokens 2048]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lcray.config import load_config  # noqa: E402
from lcray.data.schema import PreferenceExample  # noqa: E402
from lcray.models import resolve_model_path  # noqa: E402


def batches(n_steps: int, batch: int, prompt_tokens: int, vocab: int) -> list[list[PreferenceExample]]:
    import random

    rng = random.Random(0)
    ids = lambda n: [rng.randrange(10, vocab) for _ in range(n)]  # noqa: E731
    return [
        [
            PreferenceExample(prompt_ids=ids(prompt_tokens), chosen_ids=ids(32), rejected_ids=[ids(32)])
            for _ in range(batch)
        ]
        for _ in range(n_steps)
    ]


def timed(step, data) -> list[float]:
    out = []
    for b in data:
        t = time.perf_counter()
        step(b)
        out.append(time.perf_counter() - t)
    return out[1:]  # the first step warms up allocator and kernels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=2048)
    p.add_argument("--zero-stage", type=int, default=2)
    args = p.parse_args()
    model = str(resolve_model_path("tiny"))
    cfg = load_config(
        None,
        [
            f"model.name_or_path={model}",
            f"learner.zero_stage={args.zero_stage}",
            "learner.train_batch_size=4",
            "trainer.max_steps=100",
            # same threads as the in-process run: Ray sets OMP_NUM_THREADS = num_cpus
            "learner.cpus_per_learner=2",
        ],
    )
    data = batches(args.steps + 1, 4, args.prompt_tokens, 1000)

    import ray

    from lcray.actors.learner import LearnerGroup

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    group = LearnerGroup(cfg)
    actor_times = timed(group.train_step, data)
    group.shutdown()
    ray.shutdown()

    from lcray.learner import PolicyLearner
    from lcray.learner.distributed import destroy_process_group, free_port, init_process_group

    init_process_group(0, 1, "127.0.0.1", free_port())
    learner = PolicyLearner(cfg)
    local_times = timed(learner.train_step, data)
    destroy_process_group()

    a, l = statistics.median(actor_times), statistics.median(local_times)
    print(f"tokens/step: {4 * (args.prompt_tokens * 2 + 64)}  ZeRO-{args.zero_stage}  steps: {len(local_times)}")
    print(f"in-process step (median): {l * 1000:8.1f} ms")
    print(f"Ray-actor step (median):  {a * 1000:8.1f} ms")
    print(f"fixed overhead per step:  {(a - l) * 1000:8.1f} ms")
    print(f"ratio actor/in-process:   {a / l:8.3f}x  (goal <= 1.1x)")


if __name__ == "__main__":
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/lcray/torch_extensions"))
    main()
