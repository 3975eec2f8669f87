"""The run store's record of who owns which data (``RunStore.claim_data``, ``data_owners``), held
to the same contract on SQLite and PostgreSQL (``connect`` of ``test_store_contract``)."""

from __future__ import annotations

import threading

from pgserver import postgres_server  # noqa: F401 (fixture)
from test_store_contract import add_experiment, connect, store  # noqa: F401 (fixtures)


def test_a_claim_is_refused_where_another_account_owns_any_key(store):
    assert store.claim_data("alice", "data", "mnist/") == set()
    assert store.claim_data("alice", "data", "mnist/") == set()  # again: its own already
    assert store.claim_data("bob", "data", "mnist/train/") == {"alice"}  # inside hers
    assert store.claim_data("bob", "data", "") == {"alice"}  # around hers
    assert store.claim_data("bob", "data", "mnist2/") == set()  # text prefixes: mnist/ is not mnist2/
    assert store.claim_data("bob", "other", "mnist/") == set()  # another bucket
    assert store.data_owners("data", "") == {"alice", "bob"}
    assert store.data_owners("data", "mnist/x", inside=True) == {"alice"}
    assert store.data_owners("data", "mnist", inside=True) == set()  # around hers, not inside


def test_a_runs_results_are_its_accounts(store):
    add_experiment(store, "e1", account="alice", runs=1, results="wml-results/training-e1-1/")
    bucket, prefix = "wml-results", "training-e1-1/"
    assert store.data_owners(bucket, prefix, inside=True) == {"alice"}
    assert store.data_owners(bucket, "") == {"alice"}
    assert store.claim_data("bob", bucket, prefix + "mine/") == {"alice"}
    assert store.claim_data("bob", bucket, "") == {"alice"}


def test_a_percent_or_underscore_in_a_key_is_no_wildcard(store):
    assert store.claim_data("alice", "data", "a_b/") == set()
    assert store.data_owners("data", "axb/") == set()
    assert store.claim_data("bob", "data", "%/") == set()
    assert store.data_owners("data", "a_b/") == {"alice"}


def test_of_accounts_racing_for_one_prefix_one_gets_it(connect):  # noqa: F811
    stores = [connect() for _ in range(4)]
    won: list[str] = []
    barrier = threading.Barrier(len(stores))

    def claim(index: int) -> None:
        barrier.wait()
        if not stores[index].claim_data(f"account{index}", "contested", "p/"):
            won.append(f"account{index}")
    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and stores[0].data_owners("contested", "p/") == set(won)
