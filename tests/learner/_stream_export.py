"""One rank of a ZeRO-3 learner world (test_streamed_export.py starts two): trains a step, then
measures the streamed weight exports and prints JSON on rank 0.

Memory is measured by instrumenting the two places an export holds weights: bytes gathered
by deepspeed.zero.GatheredParameters (entered, not yet left) plus bytes of the copies made by
lcray.learner.export.materialize that are still alive. The peak of their sum over a whole
export is what a sync adds on top of the partitioned model.
"""

import argparse
import json
import sys
import weakref
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _ds_step import examples  # noqa: E402

from lcray.config import load_config  # noqa: E402
from lcray.learner import PolicyLearner, export  # noqa: E402
from lcray.learner.distributed import destroy_process_group, init_process_group  # noqa: E402


class Meter:
    def __init__(self) -> None:
        self.gathered = self.copies = self.peak = 0

    def add(self, gathered: int = 0, copies: int = 0) -> None:
        self.gathered += gathered
        self.copies += copies
        self.peak = max(self.peak, self.gathered + self.copies)

    def measure(self, fn) -> int:
        self.peak = self.gathered + self.copies
        fn()
        return self.peak


def instrument(meter: Meter) -> None:
    import deepspeed

    real_gather, real_materialize = deepspeed.zero.GatheredParameters, export.materialize

    class CountingGather(real_gather):
        def __init__(self, params, *args, **kwargs):
            super().__init__(params, *args, **kwargs)
            on = kwargs.get("enabled", args[2] if len(args) > 2 else True)
            self._bytes = sum(int(p.ds_numel) * p.element_size() for p in params if hasattr(p, "ds_id")) if on else 0

        def __enter__(self):
            out = super().__enter__()
            meter.add(gathered=self._bytes)
            return out

        def __exit__(self, *exc):
            meter.add(gathered=-self._bytes)
            return super().__exit__(*exc)

    def counting_materialize(item, device):
        t = real_materialize(item, device)
        n = t.numel() * t.element_size()
        meter.add(copies=n)
        weakref.finalize(t, meter.add, 0, -n)
        return t

    deepspeed.zero.GatheredParameters = CountingGather
    export.materialize = counting_materialize


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = load_config(
        None,
        [
            f"model.name_or_path={args.model}",
            "learner.zero_stage=3",
            "learner.learning_rate=0.001",
            "algo.loss_type=simpo",
            f"learner.train_batch_size={args.world}",
            *args.overrides,
        ],
    )
    init_process_group(args.rank, args.world, "127.0.0.1", args.port)
    learner = PolicyLearner(cfg, total_steps=1)
    module = learner.engine.module
    if cfg.model.lora.r > 0:
        # Non-zero adapters (lora_B starts at 0). Not by training: a LoRA step under ZeRO-3 trips
        # torch's checkpoint metadata check in sequence_logprobs' chunked lm_head (noticed, not ours).
        import deepspeed

        lora = [p for n, p in module.named_parameters() if "lora_" in n]
        with deepspeed.zero.GatheredParameters(lora, modifier_rank=0):
            torch.manual_seed(0)
            for p in lora:
                p.data.normal_(0, 0.1)
    else:
        learner.train_step(examples(learner.tokenizer, 1))
    meter = Meter()
    instrument(meter)
    res: dict = {}

    def sync_export():  # what LearnerWorker.export_bucket does with each bucket
        buckets = 0
        for bucket in learner.weight_buckets():
            if bucket is not None:
                as_dict = dict(bucket)
                del bucket, as_dict
            buckets += 1
        res["buckets"] = buckets

    res["peak_sync"] = meter.measure(sync_export)

    from lcray.actors.weight_sync import ZeroWeightSource

    source = ZeroWeightSource(module, bucket_bytes=export.bucket_bytes(cfg.rollout.sync_bucket_mb), rank=args.rank)
    res["peak_source"] = meter.measure(lambda: [None for _ in source])
    out_dir = Path(args.out) / "hf"
    res["peak_save"] = meter.measure(lambda: learner.save_hf_model(str(out_dir)))

    def whole_model_gather():  # the export before streaming: everything gathered at once
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), enabled=True):
            if args.rank == 0:
                res["whole_state"] = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

    res["peak_whole_model"] = meter.measure(whole_model_gather)

    streamed = {}
    for bucket in learner.weight_buckets():
        if bucket is not None:
            streamed.update(bucket)
    reference = res.pop("whole_state", None)
    if cfg.model.lora.r > 0:  # the reference is peft's own merge, under the whole-model gather
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), enabled=True):
            if args.rank == 0:
                module.merge_adapter()
                base = module.get_base_model().state_dict()
                reference = {k.replace(".base_layer.", "."): v.clone() for k, v in base.items() if "lora_" not in k}
                module.unmerge_adapter()
    source_pairs = dict(iter(source))
    if args.rank == 0:
        from safetensors.torch import load_file

        saved = {}
        for f in sorted(out_dir.glob("*.safetensors")):
            saved.update(load_file(f))
        res["shards"] = sorted(f.name for f in out_dir.iterdir() if "safetensors" in f.name)
        res["bucket_bytes"] = export.bucket_bytes(cfg.rollout.sync_bucket_mb)
        res["model_bytes"] = sum(v.numel() * v.element_size() for v in streamed.values())
        res["largest_tensor_bytes"] = max(v.numel() * v.element_size() for v in streamed.values())

        def same(a: dict, b: dict) -> bool:
            return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)

        res["streamed_equals_whole"] = same(streamed, reference)
        res["saved_equals_whole"] = same(saved, reference)
        res["source_equals_whole"] = same(source_pairs, reference)
        print("RESULT " + json.dumps(res), flush=True)
    destroy_process_group()


if __name__ == "__main__":
    main()
