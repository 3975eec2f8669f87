"""The bad-input corpus is big enough and well formed."""

from __future__ import annotations

from collections import Counter

import corpus

#: The campaign's floor for the number of distinct bad inputs.
MIN_CASES = 200


def test_the_corpus_has_at_least_200_distinct_bad_inputs():
    cases = corpus.all_cases()
    by_category = Counter(case.category for case in cases)
    print(f"bad-input corpus: {len(cases)} inputs: " + ", ".join(f"{k} {v}" for k, v in sorted(by_category.items())))
    assert len(cases) >= MIN_CASES
    assert len({case.id for case in cases}) == len(cases), "case ids must be unique"


def test_the_corpus_covers_every_kind_of_bad_input_asked_for():
    ids = {case.id for case in corpus.all_cases()}
    for needed in ("zip-slip-parent", "zip-slip-absolute", "zip-symlink-entry", "zip-bomb-real", "zip-truncated",
                   "zip-empty-file", "api-body-code-garbage", "huge-comment", "latin1", "bomb-billion-laughs",
                   "deep-flow-lists", "api-body-runs-negative", "api-body-runs-huge", "api-body-unknown-field",
                   "api-exp-dotdot-dots", "cli-show-encoded-dotdot", "sweep-unknown-distribution"):
        assert needed in ids, needed
    assert len(corpus.bad_manifest_files()) >= 74
    assert all(len(case.data) > (1 << 20) for case in corpus.huge_manifests())
