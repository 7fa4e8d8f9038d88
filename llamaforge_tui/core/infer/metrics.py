"""Scores of a generated answer against a reference: exact match, token F1 and ROUGE-L.

Why these are our own few lines and not a library's: the candidates were ``rouge-score`` (Google's
reference ROUGE, what ``evaluate``'s "rouge" wraps) and ``evaluate`` itself. ``rouge-score`` would add
six packages (nltk with joblib, cloudpickle and defusedxml, absl-py, and itself; its last release is
from 2022) to save one longest-common-subsequence loop, and its default tokenizer drops every character
outside ``[a-z0-9]``, so a German, Russian or Chinese answer would score zero unless we replaced its
tokenizer anyway. ``evaluate`` is heavier still (datasets, pandas, fsspec) and downloads its metric
scripts at run time, which an offline machine cannot do. So the tokenizer below is ours (it keeps
every script), and the ROUGE-L formula is the standard one (Lin 2004, the F-measure with beta 1, as
``rouge-score`` reports ``rougeL.fmeasure``); the tests check our figures against ``rouge-score``'s on
ASCII text, with Hypothesis, so the two cannot drift apart.

Normalisation, for all three: Unicode NFKC, case folded, whitespace runs collapsed, ends stripped.
Exact match compares the normalised strings (punctuation counts: "Paris." is not "Paris"). Token F1
(SQuAD's) and ROUGE-L compare word tokens: runs of letters and digits, each CJK ideograph or kana a
token of its own (those scripts write no spaces), punctuation dropped.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

# One CJK ideograph / kana / hangul syllable per token; otherwise a run of letters, digits and marks.
_TOKEN = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]"
    r"|[^\W_\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+"
)
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC, case folded, whitespace collapsed to single spaces, ends stripped."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def tokenize(text: str) -> list[str]:
    """The word tokens token F1 and ROUGE-L compare (see the module docstring)."""
    return _TOKEN.findall(normalize(text))


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the two are equal after :func:`normalize`, else 0.0."""
    return 1.0 if normalize(prediction) == normalize(reference) else 0.0


def _f1(overlap: float, n_pred: int, n_ref: int) -> float:
    if overlap <= 0 or n_pred == 0 or n_ref == 0:
        return 0.0
    precision, recall = overlap / n_pred, overlap / n_ref
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1: harmonic mean of precision and recall of the shared tokens (a multiset).
    Two answers with no tokens at all (empty, or punctuation only) agree: 1.0."""
    pred, ref = tokenize(prediction), tokenize(reference)
    if not pred and not ref:
        return 1.0
    overlap = sum((Counter(pred) & Counter(ref)).values())
    return _f1(overlap, len(pred), len(ref))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence: O(len(a) * len(b)) time, O(min) memory."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure: the F1 of LCS-precision and LCS-recall over word tokens (0.0 when either side
    has no tokens, as ``rouge-score`` does)."""
    pred, ref = tokenize(prediction), tokenize(reference)
    return _f1(lcs_length(pred, ref), len(pred), len(ref))


@dataclass(frozen=True)
class AnswerScores:
    exact_match: float
    token_f1: float
    rouge_l: float


def score_answer(prediction: str, reference: str) -> AnswerScores:
    return AnswerScores(exact_match(prediction, reference), token_f1(prediction, reference),
                        rouge_l(prediction, reference))


def mean_scores(scores: Sequence[AnswerScores]) -> AnswerScores | None:
    """The average of each score, or None when nothing was scored."""
    if not scores:
        return None
    n = len(scores)
    return AnswerScores(sum(s.exact_match for s in scores) / n, sum(s.token_f1 for s in scores) / n,
                        sum(s.rouge_l for s in scores) / n)
