"""LOGO preference-data builder on a real local Ray: vLLM rollout pool (tiny random model,
gibberish answers) + BM25 scorer pool; 6 synthetic records in 2 shards."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from lcray.actors.rollout import RolloutPool
from lcray.actors.scorer import ScorerPool
from lcray.config import LcrayConfig, validate
from lcray.data import logo_builder
from lcray.data.chunking import chunk_text
from lcray.data.contexts import format_documents
from lcray.data.logo_builder import LogoDataError, build_logo_dataset, load_logo_dataset
from lcray.data.synthetic import make_synthetic_records
from lcray.models import load_tokenizer

K, NEW, M = 8192, 16, 3


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def pools(ray_local, tiny_model_dir):
    rollout = RolloutPool.create(1, str(tiny_model_dir), backend="vllm", dtype="float32", max_model_len=4096)
    scorers = ScorerPool.create(1, importance_kind="bm25")
    yield rollout, scorers
    rollout.shutdown()
    scorers.shutdown()


@pytest.fixture(scope="module")
def cfg():
    c = LcrayConfig()
    c.data.chunk_tokens, c.data.target_len, c.algo.logo.num_negatives = 64, K, M
    ld = c.logo_data
    ld.num_relevant, ld.num_partial, ld.context_chunks, ld.max_new_tokens, ld.shard_size = 2, 1, 6, NEW, 4
    validate(c)
    return c


@pytest.fixture(scope="module")
def records():
    return make_synthetic_records(6, seed=0, num_distractors=8)


@pytest.fixture(scope="module")
def built(tmp_path_factory, cfg, tok, pools, records):
    """Build once; keep the in-memory examples (with meta) that build_logo_shard returned."""
    out = tmp_path_factory.mktemp("logo") / "data"
    made = []
    real = logo_builder.build_logo_shard

    def spy(*a, **kw):
        examples, stats = real(*a, **kw)
        made.extend(examples)
        return examples, stats

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(logo_builder, "build_logo_shard", spy)
        manifest = build_logo_dataset(
            records, cfg=cfg, tokenizer=tok, rollout=pools[0], scorers=pools[1], out_dir=out, progress=False
        )
    return out, manifest, made


def _count_calls(mp, pools):
    calls = {"generate": 0, "score_chunks": 0}
    for obj, name in ((pools[0], "generate"), (pools[1], "score_chunks")):
        real = getattr(obj, name)

        def counted(*a, _real=real, _name=name, **kw):
            calls[_name] += 1
            return _real(*a, **kw)

        mp.setattr(obj, name, counted)
    return calls


def test_shards_and_manifest_written(built, records):
    out, manifest, made = built
    assert sorted(p.name for p in out.glob("shard-*.parquet")) == ["shard-00000.parquet", "shard-00001.parquet"]
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["config_hash"] == manifest.config_hash and manifest.complete and manifest.num_shards == 2
    assert [s["num_records"] for s in on_disk["shards"]] == [4, 2]
    totals = on_disk["totals"]
    assert totals["records"] == len(records) and totals["examples"] == len(made) == manifest.num_examples
    assert totals["examples"] + sum(totals["skipped"].values()) == len(records)
    assert len(made) >= 4, totals  # gibberish answers rarely collide or come out empty
    # independent samples: one shared sampling seed made most rejected answers equal the chosen one
    assert "rejected_equals_chosen" not in totals["skipped"], totals


def test_examples_positions_cover_the_window(built, records):
    _, _, made = built
    ids = {r.id for r in records}
    for e in made:
        assert e.id in ids and e.num_negatives == M
        assert all(e.rejected_ids) and e.chosen_ids
        pos = e.prompt_position_ids
        assert len(pos) == len(e.prompt_ids) == e.meta["real_len"]
        assert all(b > a for a, b in zip(pos, pos[1:])) and 0 <= pos[0] and pos[-1] < K
        # the suffix ends right before the max_new_tokens ids reserved for the answer
        assert pos[-1] == K - NEW - 1
        for resp in [e.chosen_ids, *e.rejected_ids]:
            assert len(resp) <= NEW and pos[-1] + len(resp) < K
            assert max(e.sequence(resp)["position_ids"]) < K
        assert pos[-1] - pos[0] > 5 * len(e.prompt_ids) and pos[-1] - pos[0] > K // 2


def test_context_chunks_in_original_order(built, records, tok, cfg):
    _, _, made = built
    by_id = {r.id: r for r in records}
    answer_chunks_seen = 0
    for e in made:
        r = by_id[e.id]
        texts = chunk_text(format_documents(r.documents), tok, cfg.data.chunk_tokens)
        ctx, rel = e.meta["context_chunks"], e.meta["relevant_chunks"]
        assert ctx == sorted(set(ctx)) and set(rel) <= set(ctx) and len(ctx) == cfg.logo_data.context_chunks
        assert len(rel) == cfg.logo_data.num_relevant
        prompt = tok.decode(e.prompt_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        assert r.question in prompt and prompt.startswith("<|im_start|>user")
        at = 0
        for i in ctx:  # every C' chunk, verbatim, in original order
            at = prompt.index(texts[i], at) + len(texts[i])
        for i in rel:
            if r.answers[0] in texts[i]:
                answer_chunks_seen += 1
                assert texts[i] in prompt
        for neg in e.meta["negative_chunks"]:
            assert neg == sorted(neg) and len(neg) == len(rel)
        assert not set(e.meta["negative_chunks"][0]) & set(rel)  # irrelevant-only
        assert len(set(e.meta["negative_chunks"][1]) & set(rel)) == cfg.logo_data.num_partial  # partial
    assert answer_chunks_seen >= len(made) // 2  # BM25 on question + answer finds the answer's chunk


def test_rerun_skips_finished_shards_and_load_matches(built, cfg, tok, pools, records):
    out, manifest, made = built
    with pytest.MonkeyPatch.context() as mp:
        calls = _count_calls(mp, pools)
        again = build_logo_dataset(
            records, cfg=cfg, tokenizer=tok, rollout=pools[0], scorers=pools[1], out_dir=out, progress=False
        )
    assert calls == {"generate": 0, "score_chunks": 0}
    assert again.to_dict() == manifest.to_dict()
    loaded = load_logo_dataset(out)
    assert [e.to_row() for e in loaded] == [e.to_row() for e in made]


def test_config_change_raises_clear_error(built, cfg, tok, pools, records):
    out = built[0]
    changed = copy.deepcopy(cfg)
    changed.logo_data.num_partial = 0
    with pytest.MonkeyPatch.context() as mp:
        calls = _count_calls(mp, pools)
        with pytest.raises(LogoDataError, match=r"logo_data\.num_partial: 1 -> 0.*delete that folder"):
            build_logo_dataset(
                records, cfg=changed, tokenizer=tok, rollout=pools[0], scorers=pools[1], out_dir=out, progress=False
            )
    assert calls == {"generate": 0, "score_chunks": 0}


def test_missing_shard_is_rebuilt_alone(built, cfg, tok, pools, records, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(built[0], out)
    (out / "shard-00001.parquet").unlink()
    with pytest.MonkeyPatch.context() as mp:
        calls = _count_calls(mp, pools)
        manifest = build_logo_dataset(
            records, cfg=cfg, tokenizer=tok, rollout=pools[0], scorers=pools[1], out_dir=out, progress=False
        )
    assert calls == {"generate": 1, "score_chunks": 1} and manifest.complete
    assert (out / "shard-00001.parquet").is_file()
