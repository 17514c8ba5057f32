"""The plan of recipes/reproduce.py: each method's overrides, the CI preset, the budget model
(planned minutes per phase) and the settings lines of RESULTS.md. Kept apart from the driver so
that each file reads in one sitting."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from lcray.config import LcrayConfig
from lcray.data.contexts import gold_reply
from lcray.eval.report import BOOT_SEED, CONFIDENCE, NUM_RESAMPLES, TRAINED, model_name, po_name
from lcray.learner.ds_config import zero_stage_for
from lcray.models.precision import learner_precision, resolve_dtype

BUDGET_MIN = 90  # the full preset must fit this on the 2-core dev machine (print_plan warns)
PO_CHOICES = ("dpo", "simpo", "orpo")
PAPER_ALPHA = {"dpo": 3.0, "simpo": 1.0, "orpo": 1.0}  # SoLoPO paper, Qwen2.5-7B-Instruct
PO_SETTINGS = {  # each PO's own knobs (the same for Long-PO and SoLoPO)
    "dpo": ["algo.beta=0.1"],
    "simpo": ["algo.beta=2.5", "algo.simpo_gamma=0.5"],
    "orpo": ["algo.beta=0.25"],  # ORPO's lambda (the demo's value)
}
LOGO_SETTINGS = [
    "algo.loss_type=logo",
    "algo.beta=2.5",
    "algo.simpo_gamma=0.25",
    "algo.nll_coef=0.1",
    "algo.logo.num_negatives=2",
    "algo.solo_ra.alpha=0",
]  # paper: Mistral-7B beta/gamma, lambda 0.1, M 2
SFT_SETTINGS = ["algo.loss_type=sft", "algo.solo_ra.alpha=0"]  # the loss is the NLL: no beta, gamma or nll_coef
OFFLINE = ("logo", "sft")  # trained on a fixed example list: no rollout in their steps

# The tiny CI preset: a random model, so the gold answer is the letter pair "er" (some samples
# contain it, some don't: pairs form); 2 steps, 4 held-out questions. A random model (almost)
# never emits EOS, and a chosen answer must have ended on its own (make_pairs), so samples stop at
# " 2", a string frequent in its output (about 2/3 of the prompts then yield a pair).
CI_OVERRIDES = [
    "model.name_or_path=tiny",
    "model.lora.r=8",
    "model.lora.alpha=16",
    "data.short_context_tokens=200",
    "data.long_context_tokens=600",
    "data.chunk_tokens=64",
    "data.target_len=16384",
    "data.synthetic_distractors=6",
    "rollout.max_new_tokens=32",
    'rollout.stop=[" 2"]',
    "rollout.temperature=1.0",
    "rollout.max_model_len=2048",
    "rollout.kv_cache_space_gb=1",
    "learner.learning_rate=0.001",
    "learner.train_batch_size=2",
    "learner.cpus_per_learner=1",
    "placement.cpus_per_engine=1",
    "logo_data.context_chunks=6",
    "logo_data.max_new_tokens=16",
    "logo_data.shard_size=8",
    "solopo.prompts_per_iteration=8",
    "eval.num_prompts=4",
    "eval.long_context_tokens=600",
    "eval.max_new_tokens=8",
    "trainer.max_steps=2",
    "logging.progress_bar=false",
]
CI_TRAIN_RECORDS, CI_EVAL_RECORDS, CI_SEEDS = 16, 4, (0, 1)

# Budget model of the full preset on the 2-core dev machine (SmolLM2-135M, model.dtype=auto ->
# bf16 engines + bf16-autocast learner, full fine-tuning), fitted to the full run of 2026-11-27
# (docs/RESULTS.md, run 2): learner 343-366 tokens/s (LOGO 311), 4.5-6.1K tokens per step of 8
# examples (this model's token counts within 12%), 9.2 s of rollout + weight sync per SoLoPO step
# (16 prompts x 4 samples), ~80 s per trainer run outside its steps (start-up, one 200-question
# eval, saving), LOGO's data build 144 s for 320 records. Planned 57 min; the run took 66.6, of
# which ~10 were lost to a benchmark that shared the machine during Long-PO's first steps.
ANSWER_TOKENS = 24  # a typical sampled or gold answer (chat-template end included)
COST_S = {
    "startup": 30.0,  # one trainer run: learner (DeepSpeed), engine (vLLM), scorers, once Ray is up
    "eval_per_q_token": 0.00033,  # greedy eval, per question per (short + long) prompt token
    "learner_per_token": 1 / 350,  # forward + backward (+ its share of Adam) of one token in a training row
    "step": 0.0,  # per optimizer step beyond the tokens (inside learner_per_token at this size)
    "rollout_per_sample": 9.2 / 64,  # one sampled answer on a short prompt, weight sync included (online methods)
    "logo_build_per_record": 0.45,  # chunk scoring + 3 sampled answers per training record
}
SLOW = 1.35


# ----------------------------------------------------------------------------- configs
def method_overrides(method: str, po: str) -> list[str]:
    if method == "long-po":
        return [f"algo.loss_type={po}", *PO_SETTINGS[po], "solopo.long_po=true", "algo.solo_ra.alpha=0"]
    if method == "solopo":
        return [
            f"algo.loss_type={po}",
            *PO_SETTINGS[po],
            "solopo.long_po=false",
            f"algo.solo_ra.alpha={PAPER_ALPHA[po]}",
        ]
    if method == "logo":
        return list(LOGO_SETTINGS)
    if method == "sft":
        return list(SFT_SETTINGS)
    raise ValueError(f"no trainer for method {method!r}")


def run_dir_overrides(out: Path, method: str, *, eval_before: bool) -> list[str]:
    d = out / method
    return [
        f"trainer.output_dir={d}",
        f"ckpt.path={d}/ckpt",
        f"logging.logdir={d}/tb",
        f"logo_data.output_dir={d}/data",
        f"trainer.eval_before={str(eval_before).lower()}",
        "ckpt.resume=false",
    ]


def write_ci_data(out: Path) -> list[str]:
    """Train/eval QA files for the ci preset: different seeds AND entity pools, gold = "er"."""
    from lcray.data.records import write_records
    from lcray.data.synthetic import make_synthetic_records

    d = out / "data"
    train = [
        dataclasses.replace(r, answers=["er"])
        for r in make_synthetic_records(
            CI_TRAIN_RECORDS, seed=CI_SEEDS[0], num_support=1, num_distractors=6, entity_pool="train"
        )
    ]
    evals = [
        dataclasses.replace(r, answers=["er"])
        for r in make_synthetic_records(
            CI_EVAL_RECORDS, seed=CI_SEEDS[1], num_support=1, num_distractors=6, entity_pool="test"
        )
    ]
    write_records(train, d / "train.jsonl")
    write_records(evals, d / "eval.jsonl")
    return [f"data.train_path={d / 'train.jsonl'}", f"data.eval_path={d / 'eval.jsonl'}"]


def estimate_minutes(cfg: LcrayConfig, methods: Sequence[str], speed: str = "mid") -> dict[str, float]:
    """Planned wall time per phase (minutes) of the full preset on the 2-core dev machine
    (speed: "mid" = the pilot's costs, "slow" = 35% more)."""
    c = {k: v * (SLOW if speed == "slow" else 1.0) for k, v in COST_S.items()}
    d, a = cfg.data, ANSWER_TOKENS
    steps, batch = cfg.trainer.max_steps, cfg.learner.train_batch_size
    trained = [m for m in TRAINED if m in methods]
    # Prompt tokens of the rendered prompts: the context plus ~PROMPT_RESERVE of question and template.
    short, long = 130, d.long_context_tokens + 50
    tokens_per_example = {  # one row per example: the prompt once, then every response (shared prefix)
        "long-po": long + 2 * a,
        "solopo": short + 2 * a + long + a,  # the short pair, then the chosen answer on the long context
        "logo": cfg.logo_data.context_chunks * d.chunk_tokens + (1 + cfg.algo.logo.num_negatives) * a,
        "sft": long + a,
    }
    rollout_s = cfg.solopo.prompts_per_iteration * cfg.rollout.n_samples_per_prompt * c["rollout_per_sample"]
    evals = len(trained) + ("base" in methods)
    plan = {
        "start-up": c["startup"] * max(len(trained), 1) / 60,
        "eval": c["eval_per_q_token"] * cfg.eval.num_prompts * (short + long) * evals / 60,
    }
    for m in trained:
        step_s = c["step"] + batch * tokens_per_example[m] * c["learner_per_token"]
        step_s += 0.0 if m in OFFLINE else rollout_s
        plan[f"train {m} ({steps} steps x ~{step_s:.0f} s)"] = steps * step_s / 60
    if "logo" in trained:
        plan["LOGO data build"] = c["logo_build_per_record"] * d.num_synthetic_train / 60
    plan["total"] = sum(plan.values())
    return plan


def precision(cfg: LcrayConfig) -> str:
    """model.dtype as it ran on this machine (auto resolved: the runs here are single-machine)."""
    p = learner_precision(cfg)
    engines = resolve_dtype(cfg.model.dtype)
    learner = "fp32 weights + bf16 autocast" if p.autocast else p.load_dtype
    return f"dtype {cfg.model.dtype}: engines {engines}, learner {learner}"


def settings_items(cfg: LcrayConfig, args: argparse.Namespace, prompt_tokens: dict[str, float]) -> dict[str, str]:
    d, lr, lo, a = cfg.data, cfg.learner, cfg.model.lora, cfg.algo
    po = args.po
    n_train = CI_TRAIN_RECORDS if args.preset == "ci" else d.num_synthetic_train
    seeds = CI_SEEDS if args.preset == "ci" else (d.seed, d.seed + 10_000)  # as load_qa_records draws them
    return {
        "Model": (
            f"{model_name(cfg.model.name_or_path)} ({precision(cfg)}), LoRA r={lo.r} alpha={lo.alpha} on "
            f"{'/'.join(lo.target_modules)}"
        )
        if lo.r
        else f"{model_name(cfg.model.name_or_path)} ({precision(cfg)}), full fine-tuning",
        "Equal budget (every trained method)": f"{cfg.trainer.max_steps} optimizer steps x {lr.train_batch_size} "
        f"examples, lr {lr.learning_rate:g} ({lr.lr_scheduler_type}), "
        f"ZeRO-{zero_stage_for(lr, lr.num_learners)}, seed {cfg.trainer.seed}",
        "Data": (
            "synthetic multi-document QA" + ("" if not d.train_path else f" (files {d.train_path}, {d.eval_path})")
        )
        + f", {d.synthetic_hops}-hop; train: {n_train} "
        f"questions (seed {seeds[0]}, 'train' entity pool); held-out: {cfg.eval.num_prompts} "
        f"questions (seed {seeds[1]}, disjoint 'test' entity pool)"
        + ('; gold answer replaced by "er" (random tiny model)' if args.preset == "ci" else ""),
        "Context lengths": f"short = the supporting document(s): {prompt_tokens['short']:.0f} prompt tokens on average "
        f"(cap {d.short_context_tokens}); long = the same plus distractors: "
        f"{prompt_tokens['long']:.0f} prompt tokens (target {d.long_context_tokens}); "
        f"mean rho {prompt_tokens['rho']:.2f}",
        "Rollout (Long-PO, SoLoPO)": f"{cfg.solopo.prompts_per_iteration} short prompts x "
        f"{cfg.rollout.n_samples_per_prompt} samples per iteration, T "
        f"{cfg.rollout.temperature}, top-p {cfg.rollout.top_p}, <= "
        f"{cfg.rollout.max_new_tokens} new tokens, sub-EM labels, "
        f"{cfg.solopo.max_pairs_per_prompt} pair per prompt",
        f"Long-{po_name(po)} / SoLo-{po_name(po)}": f"{po_name(po)} with {', '.join(PO_SETTINGS[po])}; "
        "Long-PO: PO on the long context, alpha 0; "
        f"SoLoPO: PO on the short context + SoLo-RA alpha {PAPER_ALPHA[po]:g} (paper), distance {a.solo_ra.distance}",
        "LOGO": f"{', '.join(s for s in LOGO_SETTINGS if 'solo_ra' not in s)}; data: {d.chunk_tokens}-token chunks, "
        f"{cfg.logo_data.num_relevant} relevant / {cfg.logo_data.num_partial} partial, "
        f"{cfg.logo_data.context_chunks}-chunk training context over a {d.target_len}-position window, "
        f"{cfg.scorer.importance} chunk importance",
        "SFT (sanity)": f'{", ".join(SFT_SETTINGS)}: the mean token NLL of the gold answer ("{gold_reply("<gold>")}" '
        f"+ EOS) on the LONG-context prompt of each of the {n_train} training questions, cycled; no rollout, "
        "no reference, no rejected answers",
        "Eval": f"greedy, <= {cfg.eval.max_new_tokens} new tokens, sub-EM on the extracted answer; "
        f"base = the untrained model (eval_before of the first run)",
        "Statistics": f"percentile bootstrap over questions, {NUM_RESAMPLES} resamples, {int(CONFIDENCE * 100)}%, "
        f"seed {BOOT_SEED}; differences are paired (same questions resampled for both methods)",
        "Runtime": f"{cfg.rollout.backend} rollout engine, DeepSpeed learner on CPU, embedded Ray; "
        f"train time = rollout + training steps without eval; memory = learner peak RSS",
    }
