"""The config sections: one dataclass each, TRL/OpenRLHF names where they exist."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lcray.algos.registry import LOSSES
from lcray.scorers.answer import ANSWER_SCORERS
from lcray.scorers.importance import IMPORTANCE_SCORERS

# Choices that have a registry are built from it, so a new loss or scorer is accepted here with no
# second list to update. The loader checks Literal values (and suggests the close match).
LossType = Literal[tuple(LOSSES)]
AnswerScorerKind = Literal[tuple(ANSWER_SCORERS)]
ImportanceScorerKind = Literal[tuple(IMPORTANCE_SCORERS)]


@dataclass
class LoraConfig:
    r: int = 0  # LoRA rank; 0 turns LoRA off (full fine-tuning)
    alpha: int = 16  # LoRA scaling numerator (lora_alpha)
    dropout: float = 0.0  # dropout on the LoRA branch
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )  # modules that get adapters


@dataclass
class ModelConfig:
    name_or_path: str = (
        "tiny"  # "tiny" = tiny random test model, "smollm2" = bundled SmolLM2-135M-Instruct, else a local HF folder
    )
    tokenizer_path: str | None = None  # tokenizer folder; None = same as name_or_path
    # Parameter dtype of the learner and the engines; auto = bfloat16 where the hardware has native
    # bf16 (CUDA: torch.cuda.is_bf16_supported(); CPU: avx512_bf16 or amx_bf16), else float32,
    # resolved on each machine (lcray/models/precision.py). auto -> bfloat16 puts the engines in
    # bf16 and the learner in fp32 weights + bf16 autocast (bf16 weights would drop the small
    # preference-optimization updates; learner.bf16=true still gives DeepSpeed's bf16 mode).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    attn_implementation: str = "sdpa"  # HF attention kernel (sdpa, eager, flash_attention_2)
    # Recompute each decoder layer's activations in backward instead of keeping them: true = every
    # training forward, false = never, None (auto) = a forward of at least
    # gradient_checkpointing_min_tokens tokens (per rank). Costs ~15-25% of the step's time; see
    # lcray/learner/model_setup.py for the measured trade.
    gradient_checkpointing: bool | None = None
    gradient_checkpointing_min_tokens: int = 512
    rope_theta: float | None = None  # override the RoPE base; None = keep the model's
    max_position_embeddings: int | None = None  # override the context window; None = keep the model's
    lora: LoraConfig = field(default_factory=LoraConfig)  # LoRA adapters (off when r == 0)


@dataclass
class DataConfig:
    train_path: str | None = None  # JSONL/Parquet training pairs; None = synthetic data
    eval_path: str | None = None  # JSONL/Parquet eval set; None = synthetic data
    format: Literal["auto", "jsonl", "json", "parquet"] = "auto"  # file format; auto = from the extension
    prompt_key: str = "prompt"  # column holding the prompt (text or chat messages)
    chosen_key: str = "chosen"  # column holding the preferred response
    rejected_key: str = "rejected"  # column holding the dispreferred response
    on_error: Literal["raise", "skip"] = "raise"  # what to do with a malformed row
    # Offline pairs: a row whose PO prompt / chosen or rejected answer is longer raises, or is a
    # counted skip under on_error=skip (never cut: a cut answer would lose its end). None = no limit.
    max_prompt_len: int | None = None
    max_response_len: int | None = None
    seed: int = 0  # seed for synthetic data and shuffling
    num_synthetic_train: int = 64  # synthetic training examples when train_path is None
    num_synthetic_eval: int = 16  # synthetic eval examples when eval_path is None
    synthetic_hops: int = 2  # supporting documents a synthetic question chains through (1 = single-hop)
    synthetic_distractors: int = 20  # distractor documents per synthetic record
    short_context_tokens: int = 300  # length of the short (compressed) context (SoLoPO)
    long_context_tokens: int = 2048  # length of the long context in synthetic data
    chunk_tokens: int = 512  # chunk size when splitting a long context for importance scoring
    target_len: int = 32768  # LOGO position window: positions are spread over this many
    output_dir: str | None = None  # where built datasets are written; None = not written


@dataclass
class RolloutConfig:
    backend: Literal["vllm", "transformers"] = "vllm"  # generation engine
    num_engines: int = 1  # number of engine actors
    tensor_parallel_size: int = 1  # GPUs per engine
    gpu_memory_utilization: float = 0.9  # fraction of GPU memory vLLM may take
    kv_cache_space_gb: int = 1  # KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE)
    enforce_eager: bool = True  # disable CUDA graphs (faster start, simpler)
    max_model_len: int | None = None  # engine context length; None = the model's
    n_samples_per_prompt: int = 4  # responses sampled per prompt (need >= 2 to contrast)
    temperature: float = 0.85  # sampling temperature; 0 = greedy
    top_p: float = 0.95  # nucleus sampling mass
    max_new_tokens: int = 128  # tokens generated per response
    stop: list[str] = field(default_factory=list)  # stop strings
    seed: int = 0  # sampling seed
    sync_every: int = 1  # push learner weights to the engines every N steps
    overlap: bool = False  # generate batch t+1 while training on batch t (one step off-policy)
    weight_sync: Literal["auto", "object_store", "nccl"] = (
        "auto"  # learner -> engine channel; auto = nccl when learners have GPUs
    )
    # Weight sync and HF export gather and ship the model one bucket of at most this many MB at a
    # time (a larger single tensor is a bucket of its own): ~2 buckets of extra memory, not the model.
    sync_bucket_mb: float = 256.0
    # Stale-weight check after every sync: the engines re-score this many of the sequences they
    # last sampled and their per-token log-probs are compared with the learner's; 0 = off.
    sync_check_sequences: int = 2
    # Mean |engine - learner| log-prob gap per token above which an engine counts as stale; 0 = never;
    # None = by precision: 5e-3 when model.dtype is float32 (or auto resolving to it on the learner's
    # machine) and learner.bf16 is off, else 0.2.
    # Measured after a correct sync, vllm-cpu vs the learner (mean / max per token): SmolLM2-135M
    # fp32 ~1e-5 / 3.5e-5, bf16 0.056 / 0.38; the tiny test model fp32 1e-7 / 5e-7, bf16 5.6e-4 /
    # 3.9e-3. (This check found vllm-cpu's tied lm_head left stale by every sync: 1.2e-3 after 3
    # demo steps, growing; fixed in engines/vllm_engine.py.)
    max_sync_logprob_gap: float | None = None
    on_stale_weights: Literal["warn", "error"] = "error"  # a stale engine: log a warning, or stop the run


@dataclass
class ScorerConfig:
    num_scorers: int = 1  # number of scorer actors
    reward: AnswerScorerKind = "sub_em"  # how a response is scored
    f1_threshold: float = 0.5  # with reward=f1: a response counts as correct above this
    importance: ImportanceScorerKind = "bm25"  # chunk importance for context compression
    reward_model_path: str | None = None  # HF folder of the reward model (reward=reward_model)
    reward_threshold: float = 0.0  # with reward=reward_model: a response counts as correct when its reward >= this


@dataclass
class LearnerConfig:
    num_learners: int = 1  # learner actors = torch.distributed world size
    zero_stage: int = 2  # DeepSpeed ZeRO stage (0..3)
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # torch.distributed backend; auto = nccl on GPU else gloo
    learning_rate: float = 5e-7  # peak learning rate
    lr_scheduler_type: Literal["cosine", "linear", "constant"] = "cosine"  # decay after warmup
    warmup_steps: int = 0  # linear warmup steps
    weight_decay: float = 0.0  # AdamW weight decay
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW (beta1, beta2)
    max_grad_norm: float = 1.0  # gradient clipping norm; 0 = off
    train_batch_size: int = 8  # global batch per optimizer step, in samples
    micro_train_batch_size: int = 1  # samples per forward/backward on one rank
    bf16: bool = False  # train in DeepSpeed's bfloat16 mode (bf16 weights, fp32 master weights and Adam state)
    seed: int = 42  # learner seed (model init, dropout)
    cpus_per_learner: float = 1.0  # Ray CPUs reserved per learner actor
    gpus_per_learner: float = 0.0  # Ray GPUs reserved per learner actor
    # Intra-op threads of a CPU learner. Ray sets OMP_NUM_THREADS to the actor's num_cpus (1 by
    # default), which would train on one core while the roles take turns; 0 = this machine's cores
    # / num_learners. Learners with a GPU keep Ray's setting (their math is on the GPU).
    num_threads: int = 0
    # Ulysses sequence parallelism (DeepSpeed ALST): each sequence is split over this many ranks,
    # attention heads are exchanged all-to-all. num_learners = data-parallel size x this.
    sequence_parallel_size: int = 1
    # Pack the sequences of a micro-batch into one row with per-sequence attention instead of one
    # right-padded row each (OpenRLHF's --packing_samples). Always on with sequence_parallel_size > 1.
    packing_samples: bool = True
    # Forward each prompt once for all its responses: [prompt | chosen | rejected_1..M] in one row,
    # responses never seeing each other. None = on, except with flash-attention (needs sdpa).
    shared_prefix: bool | None = None
    # Token budget of one micro-batch: a rank's examples are grouped into micro-batches of at most
    # this many forwarded tokens (an example is never split); None = micro_train_batch_size examples.
    max_tokens_per_micro_batch: int | None = None
    # DeepSpeed ZeRO CPU offload (GPU runs: optimizer state / parameters kept in host memory;
    # offload_params needs zero_stage 3). On a CPU-only learner there is nothing to offload: no-ops.
    offload_optimizer: bool = False
    offload_params: bool = False


@dataclass
class LogoConfig:
    num_negatives: int = 2  # dispreferred responses per prompt in the LOGO loss


@dataclass
class SoloRAConfig:
    alpha: float = 0.0  # SoLoPO reward-alignment weight; 0 = off
    distance: Literal["abs", "squared"] = "abs"  # distance between short- and long-context rewards
    # Backward the x_long term in its own pass, so short- and long-context activations are never
    # alive together (lower peak memory; costs one no-grad forward of y_w on x_short and one more
    # gradient reduction per micro-batch). Same gradient as the joint backward. No-op if alpha == 0.
    # None (auto) = for steps whose longest x_long has >= staged_backward_min_tokens tokens
    # (measured in lcray/learner/staged_backward.py).
    staged_backward: bool | None = None
    staged_backward_min_tokens: int = 4096


@dataclass
class AlgoConfig:
    loss_type: LossType = "simpo"  # preference loss, a name in lcray.algos.registry.LOSSES
    beta: float = 2.5  # reward scale (DPO/SimPO beta, ORPO lambda)
    simpo_gamma: float = 0.5  # SimPO target reward margin
    label_smoothing: float = 0.0  # conservative DPO/SimPO smoothing, in [0, 0.5)
    nll_coef: float = 0.0  # weight of the NLL (SFT) term on chosen responses
    # Offline DPO-style losses: score every pair with the reference model once, before training,
    # store the log-probs with the data and free the reference (TRL's precompute_ref_log_probs).
    precompute_ref_logps: bool = False
    logo: LogoConfig = field(default_factory=LogoConfig)  # LOGO-specific settings
    solo_ra: SoloRAConfig = field(default_factory=SoloRAConfig)  # SoLoPO reward-alignment settings


@dataclass
class CkptConfig:
    path: str = "outputs/ckpt"  # checkpoint folder
    save_steps: int = 0  # save every N steps; 0 = only at the end
    keep_last: int = 2  # checkpoints kept on disk (older ones deleted)
    resume: bool = True  # resume from the newest checkpoint in path if one exists


@dataclass
class LoggingConfig:
    logdir: str = "outputs/tb"  # TensorBoard folder (train/* and eval/* scalars)
    log_every: int = 1  # log metrics every N steps
    progress_bar: bool = True  # show tqdm progress bars


@dataclass
class TrainerConfig:
    output_dir: str = "outputs"  # final model (HF folder) and run artifacts
    max_steps: int = 10  # optimizer steps to train
    eval_steps: int = 0  # evaluate every N steps; 0 = only at the end
    eval_before: bool = True  # evaluate the untrained model first (the 'before' of the summary)
    seed: int = 0  # global seed (data order, Ray placement)


@dataclass
class PlacementConfig:
    colocate: bool = (
        False  # engines and learners share one pool: bundle r = learner r + one engine worker (engine r if TP 1)
    )
    num_nodes: int = 1  # nodes the whole job expects in the Ray cluster
    rollout_num_nodes: int = 1  # nodes the rollout engines spread over
    learner_num_nodes: int = 1  # nodes the learners spread over
    cpus_per_engine: float = 1.0  # Ray CPUs per rollout bundle (the engine actor's; TP > 1: per TP worker bundle)
    # GPU share of ONE engine worker, <= 1: an engine has rollout.tensor_parallel_size workers, one
    # bundle each (TP 1: the actor itself). 1 on GPUs of their own, e.g. 0.5 colocated, 0 on CPU.
    gpus_per_engine: float = 0.0
    cpus_per_scorer: float = 0.5  # Ray CPUs per scorer actor (scorers get no placement group)
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = (
        "PACK"  # how each placement group's bundles spread over nodes
    )
    learner_node_resource: str | None = (
        None  # custom Ray resource pinning learners to nodes that declare it (e.g. "learner_pool")
    )
    rollout_node_resource: str | None = (
        None  # custom Ray resource pinning rollout engines to nodes that declare it (e.g. "rollout_pool")
    )


@dataclass
class LogoDataConfig:
    num_relevant: int = 6  # top-scored chunks that form the preferred answer's context C_hi (LOGO code: top 6)
    num_partial: int = 3  # top relevant chunks in the "partial" dis-preferred prompt (LOGO code: top 3)
    min_score: float = 0.0  # a chunk counts as relevant only with importance > this
    context_chunks: int = 16  # chunks in the shared training context C' (relevant + random irrelevant, original order)
    sparse_ratio: float = 0.1  # share of samples with sparse position ids (paper: sparse:continuous 1:9)
    shard_size: int = 64  # records per Parquet shard (a re-run skips finished shards)
    generation_temperature: float = 0.7  # sampling temperature of the preferred / dis-preferred answers
    generation_top_p: float = 0.95  # nucleus sampling mass of the answers
    max_new_tokens: int = 512  # tokens generated per answer (also reserved at the end of the position window)
    output_dir: str = "outputs/logo_data"  # folder of the Parquet shards and manifest.json


@dataclass
class SoLoPOConfig:
    mode: Literal["online", "offline"] = (
        "online"  # online: sample/score/train every iteration; offline: a fixed pairs file
    )
    long_po: bool = False  # the Long-PO baseline: PO on the long context, no SoLo-RA
    prompts_per_iteration: int = 8  # short prompts sampled per rollout iteration
    max_pairs_per_prompt: int = 1  # (chosen, rejected) pairs kept per prompt
    pairs_path: str | None = None  # offline mode: JSONL/Parquet with prompt, long_prompt, chosen, rejected
    long_prompt_key: str = "long_prompt"  # offline mode: column of the long-context prompt


@dataclass
class EvalConfig:
    num_prompts: int = 16  # held-out questions evaluated, each with its short and its long context
    max_new_tokens: int = 48  # greedy tokens per eval answer
    # Tokens of the long eval context; None = the workload's own: data.long_context_tokens for
    # SoLoPO, the training window data.target_len (less max_new_tokens) for LOGO.
    long_context_tokens: int | None = None


@dataclass
class LcrayConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # policy model
    data: DataConfig = field(default_factory=DataConfig)  # datasets and their columns
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # generation engines
    scorer: ScorerConfig = field(default_factory=ScorerConfig)  # rewards and importance scoring
    learner: LearnerConfig = field(default_factory=LearnerConfig)  # DeepSpeed learners and optimizer
    algo: AlgoConfig = field(default_factory=AlgoConfig)  # preference loss
    ckpt: CkptConfig = field(default_factory=CkptConfig)  # checkpointing
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # metrics and progress
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # the training loop
    placement: PlacementConfig = field(
        default_factory=PlacementConfig
    )  # where each role's actors run (Ray placement groups)
    logo_data: LogoDataConfig = field(default_factory=LogoDataConfig)  # LOGO offline preference-data builder
    solopo: SoLoPOConfig = field(default_factory=SoLoPOConfig)  # SoLoPO online/offline loop
    eval: EvalConfig = field(default_factory=EvalConfig)  # held-out evaluation during and after training
