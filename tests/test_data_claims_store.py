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


def test_an_area_is_not_confused_with_one_whose_name_it_begins(store):
    add_experiment(store, "e1", account="alice", runs=1, results="data/a/training-e1-1/")
    assert store.claim_data("alice", "data", "a/") == set()
    assert store.data_owners("data", "ab/") == set()
    assert store.data_owners("data", "ab/", inside=True) == set()
    assert store.data_owners("data", "a/training-", inside=True) == {"alice"}
    assert store.data_owners("data", "A/") == set()  # keys are case-sensitive
    assert store.claim_data("bob", "data", "ab/") == set()
    assert store.claim_data("carol", "data", "a-/") == set()
    assert store.claim_data("dave", "data", "a0/") == set()
    assert store.data_owners("data", "a/") == {"alice"}
    assert store.data_owners("data", "a") == {"alice", "bob", "carol", "dave"}  # text prefixes
    assert store.data_owners("dat", "") == set()


def test_a_key_of_the_last_code_points_has_its_owners_found(store):
    last = chr(0x10FFFF)
    add_experiment(store, "e1", account="alice", runs=1, results=f"data/{last}/training-e1-1/")
    assert store.claim_data("bob", "data", f"{last}/") == {"alice"}
    assert store.data_owners("data", last) == {"alice"}
    assert store.data_owners("data", "\ud7ff") == set()  # the code point before the surrogates


def test_the_owners_of_a_longer_key_than_any_index_reads_are_found(store):
    long = "d/" * 3000  # compared row by row (LONGEST_INDEXED), no index term per prefix
    add_experiment(store, "e1", account="alice", runs=1, results=f"data/{long}training-e1-1/")
    assert store.claim_data("bob", "data", long) == {"alice"}
    assert store.data_owners("data", f"{long}training-e1-1/x", inside=True) == {"alice"}
    assert store.data_owners("data", f"{long}d", inside=True) == set()


def test_on_postgresql_owners_are_found_whatever_the_databases_collation(postgres_server, tmp_path):  # noqa: F811
    # A collation that ignores punctuation sorts "data/a/b/..." after "data/a0", the end of the
    # range of keys that start with "data/a/" in code point order.
    from wml_backend.rundb.postgres import PostgresRunStore
    postgres_server.execute("CREATE DATABASE shifted TEMPLATE template0 LOCALE_PROVIDER icu "
                            "ICU_LOCALE 'und-u-ka-shifted' LOCALE 'C'", database="postgres")
    store = PostgresRunStore(postgres_server.url("shifted"), tmp_path / "secrets.key")
    try:
        add_experiment(store, "e1", account="alice", runs=1, results="data/a/b/training-e1-1/")
        assert store.data_owners("data", "a/") == {"alice"}
        assert store.claim_data("bob", "data", "a/") == {"alice"}
        assert store.claim_data("carol", "data", "a/b/") == {"alice"}
        assert store.data_owners("data", "a/b/training-e1-1/x", inside=True) == {"alice"}
    finally:
        store.close()
