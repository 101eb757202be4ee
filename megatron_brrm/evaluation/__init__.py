"""Evaluation harness for generative reward models: RewardBench, RM-Bench and RMB.

Layout:

* ``benchmarks/``  one loader per benchmark, each turning the benchmark's own file format
  into :class:`~evaluation.benchmarks.base.Comparison` objects (chosen vs rejected).
* ``orders.py``    the seeded per-comparison A/B order.
* ``judging.py``   runs comparisons through a judge protocol and a generation engine,
  with a resumable JSONL cache.
* ``scoring/``     the official per-benchmark scoring rules (see ``evaluation/README.md``).
* ``results.py``   results.json writing/reading and replay (re-scoring saved generations).
* ``report.py``    the printed table and the PNG report.
* ``compare.py``   several results files side by side, with published reference rows.
* ``sweep.py``     every saved step of a training run: convert, evaluate, tabulate, plot
  (``sweep_report.py``: its table and score-vs-step PNGs).

Entry point: ``python evaluation/run.py --bench all --model HF_DIR``.
"""
