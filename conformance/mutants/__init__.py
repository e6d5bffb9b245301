"""Deliberately broken backends: each must make the conformance suite fail.

Every module here is a complete backend (the NumPy reference with one semantic
mistake planted), loadable by its dotted path like any out-of-tree backend:

    pytest conformance/test_batching_queue.py --backend=conformance.mutants.queue_lifo

``tests/test_mutants.py`` runs each mutant against the conformance files that
should catch it and fails if the suite lets the mutant pass: it measures the
suite's sensitivity, not the backend's correctness. Mistakes in spec functions
(schedules) are planted by a pytest plugin module instead (``-p``).
"""
