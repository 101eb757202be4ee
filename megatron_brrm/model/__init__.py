"""Megatron-Core model building and the HF <-> Megatron parameter mappings.

``build`` (imports Megatron lazily): ``build_gpt_model``, ``transformer_config_from_hf``,
``load_hf_config``. ``mapping`` (torch only): ``get_mapping``, ``ArchMapping``,
``local_to_global_layer``. ``weights``: loading HF tensors into Megatron chunks and
streaming them back.
"""
