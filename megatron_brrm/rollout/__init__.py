"""Generation engines and judge rollouts.

Modules: ``engine`` (the ``GenerationEngine`` interface), ``hf_engine`` (transformers, CPU/GPU),
``vllm_engine`` + ``vllm_worker`` (vLLM, GPU), ``factory.make_engine`` (by ``rollout.engine``),
``sampling`` / ``stops`` (the shared sampling, logprob and stop-string contract), ``weights``
(strict loading of HF-named tensors), ``chat`` (chat-template token splicing),
``two_turn.rollout`` (multi-turn judge trajectories), ``trajectory`` (the record + metrics),
``refit`` (bucketed weight streaming into engines) and ``traces`` (SFT judge traces).
Nothing is imported here, so importing one engine never pulls in the others.
"""
