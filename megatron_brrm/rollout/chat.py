"""Chat-template token bookkeeping for multi-turn rollouts (token in, token out).

Turn 1 prompt: ``apply_chat_template(messages, add_generation_prompt=True)`` rendered to text,
then encoded with ``add_special_tokens=False`` (the template already holds any BOS).

Between turns the generated ids are kept exactly as generated (never re-tokenized, which is
the multi-turn drift that verl #3720 / ms-swift #10012 report) and only the environment's
user message is templated. Its tokens are derived from the tokenizer's own chat template,
generically: render ``history + [assistant: SENTINEL, user: next message]`` with the
generation prompt and keep the text after the sentinel. That text is "what the template puts
after an assistant message's content" followed by the new user turn and the generation
prompt; for ChatML it is ``"<|im_end|>\\n<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n"``.
(Rendering ``[user, assistant, user]`` minus ``[user, assistant]`` is not used because
templates such as Qwen3's render the last assistant message differently from an earlier one.)

Splicing rule:

* the previous turn ended with an EOS token whose text starts the suffix (ChatML
  ``<|im_end|>``): that part is already in the sequence, so only the rest is appended
  (``"\\n<|im_start|>user\\n..."``);
* any other ending (``max_new_tokens`` hit, a stop string such as BR-RM's end-of-ranking
  marker, or an EOS the template does not close with): the whole suffix is appended, i.e.
  the end-of-turn tokens the template would have written are inserted as non-generated
  tokens (loss mask 0).

A template whose suffix starts with none of the EOS tokens cannot be spliced token-exactly:
:func:`check_template_splice` raises :class:`ChatTemplateError` once, before any splicing.

The result equals what the chat template renders for the same conversation, so evaluation
(which renders) and training (which splices) see the same tokens.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

SENTINEL = "BRRMSPLICESENTINEL"


class ChatTemplateError(ValueError):
    """The tokenizer's chat template cannot be used for token splicing (message says why)."""


def render_prompt_ids(tokenizer, messages: List[Dict[str, str]]) -> List[int]:
    """Token ids of ``messages`` rendered with the generation prompt (``add_special_tokens=False``).

    Raises:
        ChatTemplateError: the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError("the tokenizer has no chat_template; set tokenizer.chat_template "
                                "(e.g. save one in tokenizer_config.json) before running rollouts")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def followup_suffix_text(tokenizer, history: List[Dict[str, str]], next_message: Dict[str, str]) -> str:
    """The template text after an assistant turn's content up to the next generation prompt.

    Args:
        history: the conversation before the assistant turn (e.g. the turn-1 messages).
        next_message: the user message that follows the assistant turn.

    Raises:
        ChatTemplateError: the template drops or rewrites the assistant content.
    """
    msgs = list(history) + [{"role": "assistant", "content": SENTINEL}, dict(next_message)]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    k = text.rfind(SENTINEL)
    if k < 0:
        raise ChatTemplateError("the chat template does not render an assistant message's content verbatim; "
                                "multi-turn token splicing needs a template that does")
    return text[k + len(SENTINEL):]


def check_template_splice(tokenizer, suffix_text: str, eos_token_ids) -> None:
    """Raise :class:`ChatTemplateError` unless the text of one of the EOS tokens starts ``suffix_text``.

    Called once per distinct suffix before splicing: a template that closes assistant turns
    with something other than an end-of-turn token the model can generate (e.g. a newline
    before ``<|im_end|>``) cannot be continued token-exactly, which is a configuration error.
    """
    texts = [tokenizer.decode([int(e)], skip_special_tokens=False) for e in sorted(set(int(e) for e in eos_token_ids))]
    if not any(t and suffix_text.startswith(t) for t in texts):
        raise ChatTemplateError(f"the chat template closes an assistant turn with {suffix_text[:40]!r}, which does not "
                                f"start with any EOS token the model generates ({texts}); cannot splice turns")


def continuation_ids(tokenizer, suffix_text: str, generated_ids: Sequence[int], eos_token_ids) -> List[int]:
    """Token ids to append after ``generated_ids`` so the next turn can be generated.

    Args:
        suffix_text: :func:`followup_suffix_text` for this conversation.
        generated_ids: the previous turn's generated ids (as generated).
        eos_token_ids: ids that end an assistant turn (the engine's EOS set).

    Returns:
        ``encode(suffix_text minus the EOS text)`` when the turn ended with an EOS token whose
        text starts the suffix, else ``encode(suffix_text)`` (see the module docstring). Never
        raises on model output: an EOS the template does not use (e.g. Qwen's
        ``<|endoftext|>`` where the template closes with ``<|im_end|>``) stays as generated and
        the template's own close follows it.
    """
    text = suffix_text
    if generated_ids and int(generated_ids[-1]) in set(int(e) for e in eos_token_ids):
        eos_text = tokenizer.decode([int(generated_ids[-1])], skip_special_tokens=False)
        if eos_text and suffix_text.startswith(eos_text):
            text = suffix_text[len(eos_text):]
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
