"""`grow-megatron study`: train variants of one run config at equal tokens, export, evaluate and
analyse them, and write one report (docs/study.md).

Layer: just below grow_megatron.cli; it drives the other commands as subprocesses (runner.py)
and reads their JSON outputs (report.py).
"""
