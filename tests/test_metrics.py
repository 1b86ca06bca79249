"""hftrain.metrics: values equal the reference libraries called directly; streaming and merging are exact."""

from __future__ import annotations

import random
import sys
import types

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from hftrain.errors import ConfigError
from hftrain.metrics import (
    MetricSuite,
    available_metrics,
    check_metric_names,
    final_number,
    merge_states,
    normalize_text,
    perplexity,
    register_metric,
    token_nll,
)

PREDICTIONS = [
    "the cat sat on the mat",
    "a quick brown fox jumps over the lazy dog",
    "forty two",
    "hello world",
    "Title: Pancakes\nIngredients: 2 eggs\nSteps: 1. mix",
    "the answer is 68",
    "no",
]
REFERENCES = [
    "the cat is sitting on the mat",
    "the quick brown fox jumped over the lazy dog",
    "forty-two",
    "Hello, world!",
    "Title: Pancakes\nIngredients: 2 eggs, 1 cup flour\nSteps: 1. mix 2. fry",
    "68",
    "yes",
]
SOURCES = [f"source {i}" for i in range(len(PREDICTIONS))]


class _Settings:
    eval_exact_match_normalization = ["lower", "punctuation", "whitespace"]
    eval_sections = ["Title:", "Ingredients:::\\d", "Steps:::^\\s*1\\."]


def _streamed(names, batches, processes=1):
    """Metric values when the rows are fed in `batches` and split round-robin over `processes` suites."""
    suites = [MetricSuite(names, _Settings()) for _ in range(processes)]
    start = 0
    for index, size in enumerate(batches):
        rows = slice(start, start + size)
        suites[index % processes].update(PREDICTIONS[rows], REFERENCES[rows], SOURCES[rows])
        start += size
    assert start == len(PREDICTIONS)
    states = [suite.states() for suite in suites]
    random.Random(0).shuffle(states)  # the order processes arrive in must not matter
    return suites[0].compute(states)


def test_bleu_and_chrf_equal_sacrebleu_corpus_scores():
    expected_bleu = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score
    expected_chrf = sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score
    assert expected_bleu > 0 and expected_chrf > 0
    for batches, processes in (([7], 1), ([3, 4], 1), ([2, 2, 2, 1], 2), ([1] * 7, 3)):
        values = _streamed(["bleu", "chrf"], batches, processes)
        assert values["bleu"] == pytest.approx(expected_bleu, abs=1e-9)
        assert values["chrf"] == pytest.approx(expected_chrf, abs=1e-9)


def test_rouge_equals_rouge_score_mean_fmeasure():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(r, p) for p, r in zip(PREDICTIONS, REFERENCES)]
    one = _streamed(["rouge1", "rouge2", "rougeL", "rougeLsum"], [7])
    split = _streamed(["rouge1", "rouge2", "rougeL", "rougeLsum"], [2, 2, 2, 1], processes=2)
    for key in ("rouge1", "rouge2", "rougeL"):
        expected = sum(s[key].fmeasure for s in scores) / len(scores)
        assert one[key] == pytest.approx(expected, abs=1e-12)
    assert one == split  # exact: per-example scores are summed as fractions
    assert 0 < one["rougeLsum"] <= 1


def test_exact_match_normalisation_numeric_match_and_sections():
    values = _streamed(["exact_match", "numeric_match", "sections"], [4, 3], processes=2)
    # "Hello, world!" matches "hello world" once lower-cased without punctuation; "forty two" != "forty-two"
    assert values["exact_match"] == pytest.approx(1 / 7)
    # only "the answer is 68" vs "68" has equal final numbers (and the recipe's "1." vs "2." differ)
    assert values["numeric_match"] == pytest.approx(1 / 7)
    assert values["section_title"] == pytest.approx(1 / 7)
    assert values["section_ingredients"] == pytest.approx(1 / 7)  # has a digit
    assert values["sections"] == pytest.approx(1 / 7) and values["sections_in_order"] == pytest.approx(1 / 7)
    assert normalize_text("  The  Cat! ", ["lower", "punctuation", "articles", "whitespace"]) == "cat"
    assert normalize_text(" A b ", []) == "A b"
    assert final_number("so 1,234.50 apples") == 1234.5 and final_number("none") is None
    assert final_number("-3") == -3


def test_sections_reports_missing_empty_and_out_of_order():
    class S:
        eval_sections = ["Title:", "Ingredients:::\\d", "Steps:"]

    suite = MetricSuite(["sections"], S())
    suite.update(
        [
            "Title: Soup\nIngredients: 1 leek\nSteps: 1. boil",  # all valid
            "Title: Soup\nIngredients: leeks\nSteps: boil",  # ingredients without a quantity
            "Steps: boil\nTitle: Soup\nIngredients: 2 leeks",  # out of order
            "Title: Soup\nIngredients:\nSteps: boil",  # empty ingredients
            "Title: Soup",  # missing sections
        ],
        [""] * 5,
        [""] * 5,
    )
    values = suite.compute([suite.states()])
    assert values["sections"] == pytest.approx(1 / 5)
    assert values["sections_in_order"] == pytest.approx(3 / 5)
    assert values["section_title"] == 1.0
    assert values["section_ingredients"] == pytest.approx(2 / 5)
    assert values["section_steps"] == pytest.approx(4 / 5)


def test_user_metrics_by_callable_import_path_and_registry(monkeypatch):
    def length_ratio(predictions, references, sources):
        return {"length_ratio": sum(len(p) for p in predictions) / sum(len(r) for r in references)}

    module = types.ModuleType("my_metrics_mod")
    module.first_char = lambda p, r, s: {"first_char": sum(a[:1] == b[:1] for a, b in zip(p, r)) / len(p)}
    monkeypatch.setitem(sys.modules, "my_metrics_mod", module)
    values = _streamed([length_ratio, "my_metrics_mod:first_char"], [7])
    assert values["length_ratio"] == pytest.approx(sum(map(len, PREDICTIONS)) / sum(map(len, REFERENCES)))
    assert values["first_char"] == pytest.approx(sum(p[0] == r[0] for p, r in zip(PREDICTIONS, REFERENCES)) / 7)

    from hftrain.metrics import _REGISTRY, _NumericMatch

    monkeypatch.setitem(_REGISTRY, "my_numeric", lambda settings: _NumericMatch())
    assert "my_numeric" in available_metrics()
    assert _streamed(["my_numeric"], [7])["numeric_match"] == pytest.approx(1 / 7)
    with pytest.raises(ConfigError, match="reserved"):
        register_metric("perplexity", lambda s: _NumericMatch())


def test_unknown_metric_name_fails_at_start_listing_the_names():
    from hftrain import TrainingArguments, resolve_arguments

    # names are checked against the registry in the resolution step every recipe and trainer runs before any work
    args = TrainingArguments(output_dir="unused", eval_metrics=["bleu", "blue"], use_cpu=True, report_to="none")
    with pytest.raises(ConfigError) as error:
        resolve_arguments(args)
    message = str(error.value)
    assert "blue" in message and "eval_metrics" in message
    for name in ("bleu", "chrf", "rougeL", "exact_match", "numeric_match", "perplexity", "sections"):
        assert name in message
    with pytest.raises(ConfigError, match="cannot import"):
        check_metric_names(["no_such_pkg.module:func"])


def test_evaluate_module_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="unknown metric 'meteor'.*evaluate"):
        check_metric_names(["meteor"])
    from hftrain.metrics import _evaluate_module

    with pytest.raises(ConfigError, match="evaluate.load\\('meteor'\\)"):
        _evaluate_module("meteor")


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("eval_generation_samples", -1, "eval_generation_samples"),
        ("eval_max_new_tokens", 0, "eval_max_new_tokens"),
        ("eval_top_p", 1.5, "eval_top_p"),
        ("eval_exact_match_normalization", ["upper"], "lower, punctuation"),
    ],
)
def test_bad_settings_name_the_field(field, value, match):
    from hftrain import TrainingArguments

    with pytest.raises(ConfigError, match=match):
        TrainingArguments(output_dir="unused", eval_metrics=["exact_match"], use_cpu=True, **{field: value})


def test_sections_metric_needs_headers():
    from hftrain import TrainingArguments

    with pytest.raises(ConfigError, match="eval_sections"):
        TrainingArguments(output_dir="unused", eval_metrics=["sections"], use_cpu=True)


def test_perplexity_is_token_weighted_and_merge_is_exact():
    from fractions import Fraction

    a = {"nll": Fraction(0.1) + Fraction(0.2), "tokens": 3}
    b = {"nll": Fraction(0.3), "tokens": 1}
    assert merge_states([a, b]) == merge_states([b, a])
    assert perplexity(merge_states([a, b])["nll"], 4) == pytest.approx(2.718281828 ** (0.6 / 4))


def test_token_nll_is_minus_log_softmax_at_the_label_and_zero_where_ignored():
    import torch

    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(torch.bfloat16)
    labels = torch.tensor([[1, 2, -100, 3, 6], [-100, -100, 0, 5, 4]])
    nll = token_nll(logits, labels)
    assert nll.shape == labels.shape and nll.dtype == torch.float32
    expected = -torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(nll, expected.masked_fill(labels == -100, 0), atol=1e-6)
    assert torch.all(nll[labels == -100] == 0)
