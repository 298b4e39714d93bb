"""Benchmarks run by ``seminar-zoo bench NAME``: each submodule has ``main(argv)``.

* ``retrieval``: approximate GSU retrieval (SEMINAR's multi-modal PQ vs exact, SimHash, faiss).
"""
