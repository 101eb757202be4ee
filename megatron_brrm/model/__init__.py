"""Megatron-Core model building and the HF <-> Megatron parameter mappings.

- ``architectures``: supported HF model types (Qwen3, Llama) and their traits.
- ``build`` (imports Megatron lazily): ``load_hf_config``, ``transformer_config_from_hf``,
  ``build_gpt_model``.
- ``mapping`` (torch only, usable without Megatron): ``get_mapping`` -> ``ArchMapping``
  (names, transforms, TP shard/gather), ``local_to_global_layer``, ``padded_vocab_size``.
- ``weights``: ``load_hf_weights_into_megatron`` (this rank's shards) and
  ``iter_megatron_to_hf`` / ``megatron_state_to_hf`` (TP gather + PP broadcast).
- ``tiny``: a random-weight HF folder for tests and the CPU demo.
"""
