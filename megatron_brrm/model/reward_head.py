"""The scalar reward head of a Bradley-Terry reward model on a Megatron ``GPTModel``.

A Bradley-Terry reward model is the causal LM's backbone with its vocabulary output layer
replaced by one bias-free linear map ``hidden -> 1`` (HF ``*ForSequenceClassification`` with
``num_labels=1``: ``score.weight`` ``[1, hidden]``). The reward of a sequence is the head's value
at its last real token (HF reads the rightmost token that is not ``pad_token_id``; the
trainer reads position ``input_length - 1`` of right-padded rows, the same token whenever the
sequence does not end in the pad token).

Placement: the head lives on the last pipeline stage under GPTModel's own attribute
``output_layer`` (checkpoint key ``output_layer.weight``, see
:mod:`megatron_brrm.model.mapping`), so Megatron's forward (final norm, then ``output_layer``,
then ``[s, b, .] -> [b, s, .]``) returns the per-position values ``[b, s, 1]``. Every TP rank
holds the whole head (one output row cannot be split): its input is the full hidden state,
which every TP rank already holds without sequence parallelism; with sequence parallelism the
sequence shards are all-gathered first and the backward pass keeps each rank's own slice of
the (full, identical) gradient instead of summing TP copies (Megatron's
``gather_from_sequence_parallel_region(..., tensor_parallel_output_grad=False)``). The head's
weight gradient is then identical on every TP rank, so no TP reduction is needed; DDP reduces
it over data parallelism like any other parameter.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

# Seed of the head's initial weights when the HF source has none (a causal LM): every rank
# draws the same values (the head is TP-replicated), independent of Megatron's RNG state.
HEAD_INIT_SEED = 20240601


class ScalarRewardHead(torch.nn.Module):
    """``values = hidden @ weight.T``: float ``[s, b, hidden]`` -> ``[s, b, 1]`` (``params_dtype``).

    Called like Megatron's ``ColumnParallelLinear`` output layer
    (``forward(hidden, weight=None, runtime_gather_output=None) -> (values, None)``).

    Args:
        config: the model's ``TransformerConfig`` (``hidden_size``, ``params_dtype``,
            ``sequence_parallel``, ``init_method_std``).
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.sequence_parallel = bool(config.sequence_parallel)
        weight = initial_head_weight(config.hidden_size, config.init_method_std, config.params_dtype)
        if torch.cuda.is_available() and not config.use_cpu_initialization:  # where Megatron puts the other weights
            weight = weight.to(torch.cuda.current_device())
        self.weight = torch.nn.Parameter(weight)
        self.weight.is_embedding_or_output_parameter = True

    def forward(self, hidden_states: torch.Tensor, weight: Optional[torch.Tensor] = None,
                runtime_gather_output: Optional[bool] = None) -> Tuple[torch.Tensor, None]:
        if self.sequence_parallel:
            # lazy: keeps train --help fast
            from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

            hidden_states = gather_from_sequence_parallel_region(hidden_states, tensor_parallel_output_grad=False)
        return torch.matmul(hidden_states, self.weight.t()), None

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: Optional[dict] = None):
        """The head as one TP-replicated tensor ``<prefix>weight`` (replicas on every TP / DP rank)."""
        from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint  # lazy: keeps train --help fast

        return make_sharded_tensors_for_checkpoint(self.state_dict(prefix="", keep_vars=True), prefix,
                                                   sharded_offsets=sharded_offsets)


def initial_head_weight(hidden_size: int, std: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The head's initial weight when the HF source has none: ``N(0, std^2)`` ``[1, hidden]``,
    drawn from a fixed seed (:data:`HEAD_INIT_SEED`) so every rank gets the same tensor.
    transformers initialises a new ``score`` layer the same way (``initializer_range``)."""
    gen = torch.Generator().manual_seed(HEAD_INIT_SEED)
    return (torch.randn(1, hidden_size, generator=gen, dtype=torch.float32) * float(std)).to(dtype)


def attach_scalar_head(model) -> None:
    """Replace a ``GPTModel``'s vocabulary output layer by a :class:`ScalarRewardHead` (in place).

    A chunk without the output layer (not the last pipeline stage) is left as it is. The model
    must have been built with untied embeddings (``share_embeddings_and_output_weights=False``).

    Raises:
        ValueError: the model ties its output layer to the embedding.
    """
    if not getattr(model, "post_process", False):
        return
    if model.share_embeddings_and_output_weights:
        raise ValueError("a scalar reward head cannot be tied to the embedding; build the model with "
                         "share_embeddings_and_output_weights=False")
    del model.output_layer
    model.output_layer = ScalarRewardHead(model.config)
