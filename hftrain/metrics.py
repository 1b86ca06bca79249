"""Evaluation metrics by name, computed in a stream: one batch at a time, merged across processes.

Every metric keeps only *additive* sufficient statistics (integer n-gram counts for BLEU/chrF, exact fractions
for per-example scores), so

* memory does not grow with the eval set (nothing but counters is kept between batches);
* merging the states of several processes gives bit-for-bit the numbers one process gets, whatever the order.

Built-in names (`available_metrics()`): `bleu`, `chrf` (sacrebleu), `rouge1`, `rouge2`, `rougeL`, `rougeLsum`
(rouge-score), `exact_match`, `numeric_match`, `sections` (structured outputs), `perplexity` (token-weighted) and,
for DPO, `dpo` (preference accuracy and implied KL), for KTO, `kto` (reward gap), for reward models, `pairwise`.
Users add their own with `register_metric`, by passing a callable `(predictions, references, sources) -> dict`, or
by import path (`package.module:function`); any other name is tried as an `evaluate` module (which needs the Hugging Face Hub at run time).
"""

from __future__ import annotations

import importlib
import math
import re
import string
from fractions import Fraction
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from .errors import ConfigError

__all__ = [
    "StreamingMetric",
    "MetricSuite",
    "register_metric",
    "available_metrics",
    "build_metrics",
    "GENERATION_FREE_METRICS",
    "EXACT_MATCH_NORMALIZATIONS",
    "normalize_text",
    "final_number",
    "parse_sections",
    "check_metric_settings",
]

State = dict[str, Any]  # additive statistics: name -> int | Fraction | list of ints


class StreamingMetric:
    """A metric fed one batch at a time. Subclasses keep additive statistics in `self.state` (ints or Fractions).

    `update` adds a batch; `compute(state)` turns (possibly merged) statistics into `{name: float}`. States of
    several processes are merged by adding them key by key, so a subclass never needs to know about processes.
    """

    def __init__(self) -> None:
        self.state: State = {}

    def update(self, predictions: Sequence[str], references: Sequence[str], sources: Sequence[str]) -> None:
        """Add the statistics of one batch."""
        raise NotImplementedError

    def compute(self, state: State) -> dict[str, float]:
        """The metric values from `state` (this process's or the sum over all processes)."""
        raise NotImplementedError

    def _add(self, key: str, value: Any) -> None:
        current = self.state.get(key)
        if current is None:
            self.state[key] = list(value) if isinstance(value, (list, tuple)) else value
        elif isinstance(current, list):
            self.state[key] = [a + b for a, b in zip(current, value)]
        else:
            self.state[key] = current + value


def merge_states(states: Iterable[State]) -> State:
    """Add states key by key (ints and Fractions add exactly, so the order of processes does not matter)."""
    merged: State = {}
    for state in states:
        for key, value in state.items():
            if key not in merged:
                merged[key] = list(value) if isinstance(value, list) else value
            elif isinstance(value, list):
                merged[key] = [a + b for a, b in zip(merged[key], value)]
            else:
                merged[key] = merged[key] + value
    return merged


def _ratio(numerator: Any, denominator: Any) -> float:
    return float(Fraction(numerator) / denominator) if denominator else 0.0


# --------------------------------------------------------------------------------------------------------------
# Built-in metrics
# --------------------------------------------------------------------------------------------------------------


class _SacreBLEUMetric(StreamingMetric):
    """Corpus BLEU or chrF from summed sentence statistics: the same value as `sacrebleu.corpus_*` on all rows."""

    def __init__(self, name: str) -> None:
        super().__init__()
        from sacrebleu.metrics import BLEU, CHRF

        self.name = name
        # sacrebleu's corpus score is a function of the per-sentence statistics summed over the corpus; these two
        # methods are the documented extension points of `sacrebleu.metrics.base.Metric` in sacrebleu 2.x.
        self.scorer = BLEU() if name == "bleu" else CHRF()

    def update(self, predictions, references, sources):
        stats = self.scorer._extract_corpus_statistics(list(predictions), [list(references)])
        self._clear_tokenizer_caches()
        total = [int(sum(column)) for column in zip(*stats)]
        if total:
            self._add("stats", total)

    @staticmethod
    def _clear_tokenizer_caches() -> None:
        # sacrebleu's tokenizers memoise up to 65,536 sentences (`functools.lru_cache` on `__call__`); each batch is
        # scored once, so the cache only makes memory grow with the eval set.
        import sacrebleu.tokenizers.tokenizer_13a as t13a
        import sacrebleu.tokenizers.tokenizer_re as tre

        for function in (t13a.Tokenizer13a.__call__, tre.TokenizerRegexp.__call__):
            getattr(function, "cache_clear", lambda: None)()

    def compute(self, state):
        if "stats" not in state:
            return {self.name: 0.0}
        return {self.name: float(self.scorer._compute_score_from_stats(list(state["stats"])).score)}


class _RougeMetric(StreamingMetric):
    """Mean ROUGE F-measure over examples (rouge-score, Porter stemmer), as Hugging Face's `rouge` reports it."""

    def __init__(self, name: str) -> None:
        super().__init__()
        from rouge_score import rouge_scorer

        self.name = name
        self.scorer = rouge_scorer.RougeScorer([name], use_stemmer=True)

    def update(self, predictions, references, sources):
        for prediction, reference in zip(predictions, references):
            if self.name == "rougeLsum":  # rougeLsum splits summaries on newlines
                prediction, reference = _sentence_lines(prediction), _sentence_lines(reference)
            score = self.scorer.score(reference, prediction)[self.name].fmeasure
            self._add("sum", Fraction(score))
            self._add("count", 1)

    def compute(self, state):
        return {self.name: _ratio(state.get("sum", 0), state.get("count", 0))}


def _sentence_lines(text: str) -> str:
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


EXACT_MATCH_NORMALIZATIONS = ("lower", "punctuation", "whitespace", "articles")
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.IGNORECASE)


def normalize_text(text: str, options: Iterable[str]) -> str:
    """`text` stripped and normalised by `options` (a subset of `EXACT_MATCH_NORMALIZATIONS`)."""
    options = set(options)
    if "lower" in options:
        text = text.lower()
    if "punctuation" in options:
        text = text.translate(str.maketrans("", "", string.punctuation))
    if "articles" in options:
        text = _ARTICLES.sub(" ", text)
    if "whitespace" in options:
        text = " ".join(text.split())
    return text.strip()


class _ExactMatch(StreamingMetric):
    """Share of predictions equal to their reference after normalisation."""

    def __init__(self, normalization: Sequence[str]) -> None:
        super().__init__()
        self.normalization = tuple(normalization)

    def update(self, predictions, references, sources):
        for prediction, reference in zip(predictions, references):
            self._add(
                "hits",
                int(normalize_text(prediction, self.normalization) == normalize_text(reference, self.normalization)),
            )
            self._add("count", 1)

    def compute(self, state):
        return {"exact_match": _ratio(state.get("hits", 0), state.get("count", 0))}


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def final_number(text: str) -> Optional[Fraction]:
    """The last number in `text` as an exact fraction (`"so 1,234.50"` → 1234.5), or None if there is none."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return Fraction(found[-1].replace(",", ""))
    except ValueError:
        return None


class _NumericMatch(StreamingMetric):
    """Share of predictions whose final number equals the reference's final number (math answers)."""

    def update(self, predictions, references, sources):
        for prediction, reference in zip(predictions, references):
            target, guess = final_number(reference), final_number(prediction)
            self._add("hits", int(target is not None and guess == target))
            self._add("count", 1)

    def compute(self, state):
        return {"numeric_match": _ratio(state.get("hits", 0), state.get("count", 0))}


def parse_sections(spec: Sequence[str]) -> list[tuple[str, Optional[re.Pattern]]]:
    """`["Title:", "Ingredients:::\\d", ...]` → [(header, pattern or None)]. `HEADER::REGEX` adds a content check."""
    parsed = []
    for entry in spec:
        # The last `::` separates, so a header may end with a colon: `Ingredients:::\d` → "Ingredients:", r"\d".
        header, _, pattern = str(entry).rpartition("::") if "::" in str(entry) else (str(entry), "", "")
        if not header.strip():
            raise ConfigError(
                f"eval_sections: empty section header in {entry!r}; expected 'HEADER' or 'HEADER::REGEX'"
            )
        try:
            parsed.append((header.strip(), re.compile(pattern, re.MULTILINE) if pattern else None))
        except re.error as exc:
            raise ConfigError(f"eval_sections: invalid regular expression {pattern!r} for {header!r}: {exc}") from exc
    return parsed


def _slug(header: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", header.lower()).strip("_") or "section"


class _Sections(StreamingMetric):
    """Structured outputs: each required section present, non-empty (and matching its pattern), all in order.

    Reports `sections` (share of outputs where every section is valid and the order is right), `sections_in_order`
    and `section_<name>` (share of outputs where that section is valid).
    """

    def __init__(self, spec: Sequence[str]) -> None:
        super().__init__()
        if not spec:
            raise ConfigError(
                "eval_sections: the `sections` metric needs the section headers, e.g. "
                "--eval_sections 'Title:' 'Ingredients:::\\d' 'Steps:::^\\s*1\\.'"
            )
        self.sections = parse_sections(spec)

    def _check(self, text: str) -> tuple[list[int], int]:
        positions = [text.find(header) for header, _ in self.sections]
        valid = []
        for index, ((header, pattern), start) in enumerate(zip(self.sections, positions)):
            if start < 0:
                valid.append(0)
                continue
            body_start = start + len(header)
            later = [p for p in positions if p > start]
            body = text[body_start : min(later) if later else len(text)].strip()
            valid.append(int(bool(body) and (pattern is None or pattern.search(body) is not None)))
        found = [p for p in positions if p >= 0]
        in_order = int(len(found) == len(positions) and found == sorted(found))
        return valid, in_order

    def update(self, predictions, references, sources):
        for prediction in predictions:
            valid, in_order = self._check(prediction)
            self._add("valid", valid)
            self._add("in_order", in_order)
            self._add("all", int(in_order and all(valid)))
            self._add("count", 1)

    def compute(self, state):
        count = state.get("count", 0)
        values = {
            "sections": _ratio(state.get("all", 0), count),
            "sections_in_order": _ratio(state.get("in_order", 0), count),
        }
        for (header, _), hits in zip(self.sections, state.get("valid", [0] * len(self.sections))):
            values[f"section_{_slug(header)}"] = _ratio(hits, count)
        return values


class _CallableMetric(StreamingMetric):
    """A user function `(predictions, references, sources) -> dict`, called per batch; values are averaged over
    examples (weighted by batch size). Corpus-level statistics that do not average should be a `StreamingMetric`."""

    def __init__(self, function: Callable, label: str) -> None:
        super().__init__()
        self.function, self.label = function, label

    def update(self, predictions, references, sources):
        result = self.function(list(predictions), list(references), list(sources))
        if not isinstance(result, dict):
            raise TypeError(f"eval_metrics: {self.label} returned {type(result).__name__}, expected a dict of numbers")
        size = len(predictions)
        for key, value in result.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._add(f"sum/{key}", Fraction(value) * size)
        self._add("count", size)

    def compute(self, state):
        count = state.get("count", 0)
        return {key[4:]: _ratio(value, count) for key, value in state.items() if key.startswith("sum/")}


def _evaluate_module(name: str) -> StreamingMetric:
    try:
        import evaluate

        module = evaluate.load(name)
    except Exception as exc:  # evaluate raises FileNotFoundError / ConnectionError / ValueError offline
        raise ConfigError(
            f"eval_metrics: '{name}' is not a built-in metric ({', '.join(available_metrics())}) and "
            f"`evaluate.load('{name}')` failed ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "evaluate modules need the Hugging Face Hub at run time; offline, use a built-in name, a callable or "
            "an import path 'package.module:function'."
        ) from exc

    def run(predictions, references, sources):
        return module.compute(predictions=predictions, references=references)

    return _CallableMetric(run, f"evaluate module '{name}'")


# name -> factory(settings) -> StreamingMetric
_REGISTRY: dict[str, Callable[[Any], StreamingMetric]] = {
    "bleu": lambda s: _SacreBLEUMetric("bleu"),
    "chrf": lambda s: _SacreBLEUMetric("chrf"),
    "rouge1": lambda s: _RougeMetric("rouge1"),
    "rouge2": lambda s: _RougeMetric("rouge2"),
    "rougeL": lambda s: _RougeMetric("rougeL"),
    "rougeLsum": lambda s: _RougeMetric("rougeLsum"),
    "exact_match": lambda s: _ExactMatch(getattr(s, "eval_exact_match_normalization", ()) or ()),
    "numeric_match": lambda s: _NumericMatch(),
    "sections": lambda s: _Sections(getattr(s, "eval_sections", None) or ()),
}

# Names computed without generation (by hftrain.generation_eval from forward passes).
GENERATION_FREE_METRICS = ("perplexity", "dpo", "kto", "pairwise")


def register_metric(name: str, factory: Callable[[Any], StreamingMetric]) -> None:
    """Make `name` usable in `eval_metrics`. `factory(settings)` returns a fresh `StreamingMetric` per evaluation."""
    if name in GENERATION_FREE_METRICS:
        raise ConfigError(f"register_metric: '{name}' is reserved for hftrain's own metric")
    _REGISTRY[name] = factory


def available_metrics() -> list[str]:
    """Every built-in or registered metric name."""
    return sorted([*_REGISTRY, *GENERATION_FREE_METRICS], key=str.lower)


def _from_import_path(path: str) -> Optional[Any]:
    module_name, sep, attribute = path.partition(":")
    if not sep:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        return None
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"eval_metrics: cannot import '{path}' ({exc.__class__.__name__}: {exc})") from exc


def _looks_like_import_path(name: str) -> bool:
    return ":" in name or ("." in name and "/" not in name)


def _build_one(entry: Union[str, Callable], settings: Any) -> Optional[StreamingMetric]:
    if callable(entry) and not isinstance(entry, str):
        if isinstance(entry, type) and issubclass(entry, StreamingMetric):
            return entry()
        return _CallableMetric(entry, getattr(entry, "__name__", repr(entry)))
    name = str(entry)
    if name in GENERATION_FREE_METRICS:
        return None
    if name in _REGISTRY:
        return _REGISTRY[name](settings)
    if _looks_like_import_path(name):
        target = _from_import_path(name)
        if isinstance(target, type) and issubclass(target, StreamingMetric):
            return target()
        if callable(target):
            return _CallableMetric(target, name)
        raise ConfigError(f"eval_metrics: '{name}' is not callable")
    return _evaluate_module(name)


def check_metric_names(names: Sequence[Union[str, Callable]]) -> None:
    """Fail early, naming the value and the choices, for a name that is neither built-in, registered, an import
    path nor (when the Hub may be reachable) an `evaluate` module. Offline (`HF_HUB_OFFLINE=1`) an unknown bare
    name is an error here rather than at the first evaluation."""
    import os

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get(
        "HF_EVALUATE_OFFLINE", "0"
    ).lower() in ("1", "true", "yes")
    for entry in names:
        if not isinstance(entry, str):
            if not callable(entry):
                raise ConfigError(f"eval_metrics: expected names or callables, got {entry!r}")
            continue
        if entry in _REGISTRY or entry in GENERATION_FREE_METRICS:
            continue
        if _looks_like_import_path(entry):
            _from_import_path(entry)
            continue
        if offline or not re.fullmatch(r"[\w\-]+(/[\w\-]+)?", entry):
            raise ConfigError(
                f"eval_metrics: unknown metric '{entry}'. Available: {', '.join(available_metrics())}; or a callable, "
                "an import path 'package.module:function', or an `evaluate` module name (needs the Hub)."
            )


def check_metric_settings(settings: Any) -> None:
    """Validate the evaluation-metric fields of an arguments object (called from `HFTrainArguments`)."""
    names = list(getattr(settings, "eval_metrics", None) or [])
    if isinstance(getattr(settings, "eval_metrics", None), str):
        names = settings.eval_metrics.replace(",", " ").split()
        settings.eval_metrics = names
    check_metric_names(names)
    for field_name in ("eval_generation_samples", "eval_log_samples"):
        value = getattr(settings, field_name)
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"{field_name}: expected a whole number >= 0, got {value!r}")
    for field_name in ("eval_max_new_tokens", "eval_generation_batch_size", "eval_num_beams"):
        value = getattr(settings, field_name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{field_name}: expected a whole number >= 1, got {value!r}")
    if not settings.eval_temperature > 0:
        raise ConfigError(f"eval_temperature: expected a number > 0, got {settings.eval_temperature!r}")
    if not 0 < settings.eval_top_p <= 1:
        raise ConfigError(f"eval_top_p: expected a number in (0, 1], got {settings.eval_top_p!r}")
    unknown = [o for o in settings.eval_exact_match_normalization if o not in EXACT_MATCH_NORMALIZATIONS]
    if unknown:
        raise ConfigError(
            f"eval_exact_match_normalization: unknown option(s) {unknown}; allowed: {', '.join(EXACT_MATCH_NORMALIZATIONS)}"
        )
    if "sections" in names:
        if not settings.eval_sections:
            raise ConfigError(
                "eval_sections: the `sections` metric needs section headers, e.g. "
                "--eval_sections 'Title:' 'Ingredients:::\\d' 'Steps:::^\\s*1\\.'"
            )
        parse_sections(settings.eval_sections)
    if settings.eval_response_template is not None and not settings.eval_response_template:
        raise ConfigError("eval_response_template: expected a non-empty string or None, got ''")


class MetricSuite:
    """The generation metrics of one evaluation: feed batches, then `compute(merged_state)`."""

    def __init__(self, entries: Sequence[Union[str, Callable]], settings: Any = None) -> None:
        self.metrics = [m for m in (_build_one(e, settings) for e in entries) if m is not None]

    def __bool__(self) -> bool:
        return bool(self.metrics)

    def update(self, predictions: Sequence[str], references: Sequence[str], sources: Sequence[str]) -> None:
        """Add one batch to every metric."""
        for metric in self.metrics:
            metric.update(predictions, references, sources)

    def states(self) -> list[State]:
        """This process's statistics, one state per metric (picklable, for `gather_object`)."""
        return [dict(metric.state) for metric in self.metrics]

    def compute(self, per_process_states: Sequence[list[State]]) -> dict[str, float]:
        """Merge the states of every process and compute each metric."""
        values: dict[str, float] = {}
        for index, metric in enumerate(self.metrics):
            values.update(metric.compute(merge_states(states[index] for states in per_process_states)))
        return values


def build_metrics(entries: Sequence[Union[str, Callable]], settings: Any = None) -> MetricSuite:
    """A fresh `MetricSuite` for the generation metrics among `entries` (perplexity/dpo are handled elsewhere)."""
    return MetricSuite(entries, settings)


def perplexity(nll_sum: Any, token_count: int) -> float:
    """exp(sum of NLL / number of target tokens); inf if it overflows, nan with no tokens."""
    if not token_count:
        return float("nan")
    mean = float(Fraction(nll_sum) / token_count)
    return math.exp(mean) if mean < 700 else float("inf")


def token_nll(logits: Any, labels: Any, ignore_index: int = -100) -> Any:
    """Per-token negative log-likelihood of `labels` under `logits` (`[..., vocab]`), 0 where `labels == ignore_index`.

    Callers align logits and labels (decoder-only models shift by one; encoder-decoder ones do not). The logits are
    upcast to float32 so the NLL does not depend on the model's dtype.
    """
    import torch

    flat = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=ignore_index, reduction="none"
    )
    return flat.view(labels.shape)
