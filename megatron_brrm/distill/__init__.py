"""Distillation of judge traces (RM-R1's first stage): a teacher judges labelled preference
pairs, only traces with the right verdict are kept, and they become SFT data.

Modules: ``teachers`` (an engine of this project through the rollout, or an OpenAI-compatible
HTTP endpoint), ``openai_chat`` (the endpoint client, standard library only), ``rejection``
(classification kept / wrong / malformed, both orders, the trace format, the per-source
summary). CLI: ``tools/distill_traces.py``. Imports ``judge``, ``data`` and ``rollout`` of the
project; nothing is imported here.
"""
