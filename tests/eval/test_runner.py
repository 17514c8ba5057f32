"""lcray.eval runner + needle sweep. Fake in-process engines (answers known exactly) test the
scoring/aggregation math, the needle placement and the outputs; one slow test runs `lcray eval`
end to end on the tiny model with the real vLLM engine."""

from __future__ import annotations

import json
import re

import pytest

from lcray.data.contexts import format_documents, render_prompt
from lcray.data.records import write_records
from lcray.data.synthetic import make_synthetic_records
from lcray.engines import Completion, GenerationResult
from lcray.eval import EvalReport, EvalTask, evaluate_model, load_task_file, needle_sweep, render_heatmap
from lcray.eval.needle import NEEDLE, make_needle_cases
from lcray.eval.runner import CellResult, parse_lengths


def _result(text: str) -> GenerationResult:
    return GenerationResult(prompt_token_ids=[], completions=[Completion(text=text, token_ids=[], logprobs=[])])


class OracleQA:
    """Answers "Answer: <reply>" when it knows the question, "Answer: unknown" otherwise."""

    def __init__(self, replies: dict[str, str]) -> None:
        self.replies, self.prompts, self.calls = replies, [], 0

    def generate(self, prompts, sampling):
        assert sampling.temperature == 0.0  # greedy
        self.calls += 1
        self.prompts += list(prompts)
        out = []
        for p in prompts:
            q = re.search(r"Question: (.*)\n", p).group(1)
            out.append(_result(f"Let me think. Answer: {self.replies.get(q, 'unknown')}"))
        return out


class ShortSighted:
    """Finds the needle by regex, but only within the first `window` tokens of the prompt."""

    def __init__(self, tokenizer, window: int) -> None:
        self.tok, self.window = tokenizer, window

    def generate(self, prompts, sampling):
        out = []
        for p in prompts:
            seen = self.tok.decode(self.tok(p, add_special_tokens=False)["input_ids"][: self.window])
            m = re.search(r"special magic number for .+? is (\d{7})", seen)
            out.append(_result(f"Answer: {m.group(1) if m else '0000000'}"))
        return out


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from lcray.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def test_evaluate_model_scores_and_report(tiny_model_dir, tok, tmp_path):
    a = make_synthetic_records(4, seed=1, num_distractors=6, entity_pool="test")
    b = make_synthetic_records(2, seed=2, num_distractors=6, entity_pool="test")
    # task a: 3 of 4 right (sub_em 0.75); task b, f1: one exact (1.0), one with an extra
    # word "xq" (precision 1/2, recall 1 -> 2/3): mean 5/6
    replies = {r.question: r.answers[0] for r in a[:3]}
    replies[b[0].question] = b[0].answers[0]
    replies[b[1].question] = f"{b[1].answers[0]} xq"
    write_records(a, tmp_path / "qa_a.jsonl")
    task_a = load_task_file(tmp_path / "qa_a.jsonl")
    assert (task_a.name, task_a.metric, len(task_a.records)) == ("qa_a", "sub_em", 4)
    engine = OracleQA(replies)
    report = evaluate_model(
        tiny_model_dir, [task_a, EvalTask("b", b, "f1")], context_lengths=[None, 400], engine=engine, max_new_tokens=8
    )
    assert engine.calls == 1 and len(engine.prompts) == 12  # one batched call for all cells
    # full length = the record's own documents, rendered with the shared QA template
    assert engine.prompts[0] == render_prompt(format_documents(a[0].documents), a[0].question, tok)
    for length in (None, 400):
        assert report.cell("qa_a", length).score == pytest.approx(0.75)
        assert report.cell("b", length).score == pytest.approx(5 / 6)
        assert report.cell("b", length).n == 2
    assert report.cell("qa_a", 400).context_tokens <= 400 * 1.15
    assert report.cell("qa_a", 400).context_tokens < report.cell("qa_a", None).context_tokens
    assert report.average == pytest.approx((0.75 + 5 / 6) / 2)
    d = json.loads(report.to_json())
    assert d["scores"]["b"]["400"] == pytest.approx(5 / 6)
    both = pytest.approx((0.75 + 5 / 6) / 2)
    assert d["average_by_length"] == {"full": both, "400": both}
    files = report.save(tmp_path / "out")
    assert json.loads(open(files["json"]).read()) == d
    assert open(files["markdown"]).read() == report.to_markdown()
    rows = [json.loads(x) for x in open(files["predictions"])]
    assert len(rows) == 12 and rows[0]["prediction"].strip() == a[0].answers[0]


def test_report_math_and_markdown():
    cells = [
        CellResult("x", None, "sub_em", 1.0, 2, 900.0),
        CellResult("x", 500, "sub_em", 0.5, 2, 480.0),
        CellResult("y", None, "f1", 0.25, 3, 700.0),
        CellResult("y", 500, "f1", 0.0, 3, 500.0),
    ]
    r = EvalReport(model="m", lengths=[500, None], cells=cells)
    assert r.length_averages() == {"500": 0.25, "full": 0.625}
    assert r.average == pytest.approx(0.4375)
    md = r.to_markdown().splitlines()
    assert md[0] == "| Task (metric) | n | 500 | full |"
    assert md[2] == "| x (sub_em) | 2 | 0.500 | 1.000 |"
    assert md[3] == "| y (f1) | 3 | 0.000 | 0.250 |"
    assert md[4] == "| **Average** | | 0.250 | 0.625 |"
    assert parse_lengths("1000, full,1000,2000") == [1000, None, 2000]
    with pytest.raises(ValueError):
        parse_lengths("0")
    with pytest.raises(ValueError, match="unknown metric"):
        EvalTask("z", make_synthetic_records(1, seed=0), "bleu")


def test_needle_placement(tok):
    cases = make_needle_cases(tok, lengths=[400, 1500], depths=[0.0, 0.5, 1.0], num_trials=2, seed=3)
    assert len(cases) == 12
    assert cases == make_needle_cases(tok, lengths=[400, 1500], depths=[0.0, 0.5, 1.0], num_trials=2, seed=3)
    for c in cases:
        assert c.context.count(c.needle) == 1 and c.context.index(c.needle) == c.needle_offset
        assert c.entity not in c.context.replace(c.needle, "")  # the needle is the only mention
        assert 0.9 * c.length <= c.context_tokens <= 1.02 * c.length
        pos = c.needle_offset / len(c.context)
        if c.depth == 0.0:
            assert c.context.startswith(c.needle)
        elif c.depth == 1.0:
            assert c.context.endswith(c.needle)
        else:
            assert 0.4 < pos < 0.6
    assert len({c.entity for c in cases}) == 2  # one entity per trial


def test_needle_sweep_scores_and_heatmap(tok, tmp_path):
    # sees the first 900 prompt tokens: the needle at depth 0 and 0.5 of both haystacks
    # (at most ~800 tokens in), at depth 1 only in the 400-token one
    result = needle_sweep(ShortSighted(tok, 900), tok, lengths=[400, 1500], depths=[0.0, 0.5, 1.0], seed=0)
    assert result.score(400, 0.0) == result.score(1500, 0.0) == 1.0
    assert result.score(400, 1.0) == 1.0 and result.score(1500, 1.0) == 0.0
    assert result.score(400, 0.5) == 1.0 and result.score(1500, 0.5) == 1.0
    assert result.average == pytest.approx(5 / 6)
    d = json.loads(result.to_json())
    assert d["lengths"] == [400, 1500] and d["depths"] == [0.0, 0.5, 1.0] and len(d["trials"]) == 6
    md = result.to_markdown().splitlines()
    assert md[0] == "| Depth \\ Length | 400 | 1500 |" and md[4] == "| 1 | 1.000 | 0.000 |"
    png = render_heatmap(result, tmp_path / "nested" / "h.png")
    data = open(png, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    h, w, _ = imread(png).shape
    assert w > 200 and h > 150
    files = result.save(tmp_path / "needle")
    assert sorted(files) == ["heatmap", "json", "markdown"]
    assert NEEDLE.format(entity="E", number="1234567") == "The special magic number for E is 1234567."


@pytest.mark.slow
def test_lcray_eval_cli_vllm(tiny_model_dir, tmp_path, capsys):
    import os

    import torch.distributed as dist

    from lcray.cli import main

    env = dict(os.environ)
    write_records(make_synthetic_records(2, seed=5, num_distractors=3, entity_pool="test"), tmp_path / "t.jsonl")
    out = tmp_path / "out"
    rc = main(
        [
            "eval",
            "--model",
            str(tiny_model_dir),
            "--task",
            f"{tmp_path / 't.jsonl'}:f1",
            "--synthetic",
            "2",
            "--lengths",
            "200,full",
            "--needle",
            "--needle-lengths",
            "150,300",
            "--needle-depths",
            "0,1",
            "--backend",
            "vllm",
            "--max-new-tokens",
            "4",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    # the in-process engine was released: no process group, environment as before
    assert not dist.is_initialized() and dict(os.environ) == env
    d = json.loads((out / "results.json").read_text())
    assert set(d) == {"model", "lengths", "scores", "cells", "average_by_length", "average"}
    assert d["lengths"] == ["200", "full"] and set(d["scores"]) == {"t", "synthetic"}
    assert {c["metric"] for c in d["cells"]} == {"f1", "sub_em"} and all(c["n"] == 2 for c in d["cells"])
    assert "| **Average** |" in (out / "results.md").read_text()
    n = json.loads((out / "needle.json").read_text())
    assert n["lengths"] == [150, 300] and len(n["scores"]) == 2
    assert (out / "needle.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "| t (f1) | 2 |" in printed and str(out / "results.json") in printed
