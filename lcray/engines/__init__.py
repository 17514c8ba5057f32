"""Generation back ends behind one interface (base.GenerationEngine)."""

from lcray.engines.base import Completion, GenerationEngine, GenerationResult, SamplingConfig


def create_engine(backend: str, model_path: str, **kwargs) -> GenerationEngine:
    """Build the engine named by `rollout.backend`; imports the heavy back end lazily."""
    if backend == "vllm":
        from lcray.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, **kwargs)
    if backend == "transformers":
        from lcray.engines.hf_engine import HFEngine

        allowed = {"dtype", "seed"}
        return HFEngine(model_path, **{k: v for k, v in kwargs.items() if k in allowed})
    raise ValueError(f"rollout.backend: unknown engine {backend!r} (expected 'vllm' or 'transformers')")


__all__ = ["Completion", "GenerationEngine", "GenerationResult", "SamplingConfig", "create_engine"]
