"""Benchmarks of the fedlearn framework (``python -m benchmarks.run``).

Note: opacus installs an unrelated top-level ``benchmarks`` package into
site-packages; this regular package shadows it when the repository root comes
first on ``sys.path`` (``python -m`` from the root, or ``PYTHONPATH``).
"""
