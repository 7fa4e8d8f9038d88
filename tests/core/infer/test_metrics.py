"""Answer scores: exact match, token F1 and ROUGE-L, by example and by property; ROUGE-L agrees with Google's
``rouge-score`` (the reference implementation) on the text that one can tokenize."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llamaforge_tui.core.infer.metrics import (
    exact_match,
    lcs_length,
    mean_scores,
    normalize,
    rouge_l,
    score_answer,
    token_f1,
    tokenize,
)

WORDS = st.lists(st.sampled_from(["the", "cat", "sat", "on", "a", "mat", "Paris", "42", "x"]), max_size=12)
ASCII_TEXT = st.text(alphabet=st.sampled_from(list("abcAB xy01.,!?-\n\t")), max_size=40)


def test_exact_match_ignores_case_and_whitespace_only() -> None:
    assert exact_match("  The capital   of France\nis PARIS. ", "the capital of france is paris.") == 1.0
    assert exact_match("Paris", "Paris.") == 0.0  # punctuation still counts
    assert exact_match("", "") == 1.0


def test_token_f1_by_hand() -> None:
    # prediction 4 tokens, reference 6, 3 shared: P 3/4, R 1/2, F1 = 0.6
    assert token_f1("the cat sat down", "the cat sat on the mat") == pytest.approx(0.6)
    assert token_f1("Paris.", "paris") == 1.0  # punctuation is not a token
    assert token_f1("", "something") == 0.0
    assert token_f1("...", "!") == 1.0  # two answers with no words agree (SQuAD)


def test_rouge_l_by_hand() -> None:
    # LCS of "a b c d" and "a c b d" is 3: P = R = 3/4
    assert rouge_l("a b c d", "a c b d") == pytest.approx(0.75)
    assert rouge_l("police killed the gunman", "police kill the gunman") == pytest.approx(0.75)
    assert rouge_l("", "x") == 0.0


def test_tokenize_keeps_every_script() -> None:
    assert tokenize("Größe: 12 Äpfel!") == ["grösse", "12", "äpfel"]  # casefold: ß is ss
    assert tokenize("Москва — столица") == ["москва", "столица"]
    assert tokenize("東京は首都") == ["東", "京", "は", "首", "都"]
    assert rouge_l("東京は日本の首都です", "東京は首都です") > 0.5  # rouge-score's own tokenizer would give 0.0
    assert normalize("ＡＢＣ\u00a0 d") == "abc d"  # NFKC folds full-width letters and NBSP


@settings(max_examples=200, deadline=None)
@given(a=WORDS, b=WORDS)
def test_lcs_properties(a: list[str], b: list[str]) -> None:
    n = lcs_length(a, b)
    assert n == lcs_length(b, a)
    assert 0 <= n <= min(len(a), len(b))
    assert lcs_length(a, a) == len(a)
    assert lcs_length(a + b, b) == len(b)  # b is a subsequence of a + b


@settings(max_examples=200, deadline=None)
@given(p=ASCII_TEXT, r=ASCII_TEXT)
def test_scores_are_bounded_symmetric_and_ordered(p: str, r: str) -> None:
    s = score_answer(p, r)
    for value in (s.exact_match, s.token_f1, s.rouge_l):
        assert 0.0 <= value <= 1.0
    assert token_f1(p, r) == pytest.approx(token_f1(r, p))
    assert rouge_l(p, r) == pytest.approx(rouge_l(r, p))
    if s.exact_match == 1.0:
        assert s.token_f1 == 1.0
        assert s.rouge_l == 1.0 or not tokenize(r)
    assert s.rouge_l <= s.token_f1 + 1e-12  # an LCS never exceeds the multiset overlap


@settings(max_examples=300, deadline=None)
@given(p=ASCII_TEXT, r=ASCII_TEXT)
def test_rouge_l_matches_rouge_score(p: str, r: str) -> None:
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    reference = rouge_scorer.RougeScorer(["rougeL"]).score(r, p)["rougeL"].fmeasure
    assert rouge_l(p, r) == pytest.approx(reference, abs=1e-12)


def test_mean_scores() -> None:
    assert mean_scores([]) is None
    mean = mean_scores([score_answer("a b", "a b"), score_answer("c", "a b")])
    assert mean is not None
    assert (mean.exact_match, mean.token_f1, mean.rouge_l) == (0.5, 0.5, 0.5)
