"""Deriving the turn-2 user tokens from a chat template (rollout/chat.py), with several templates."""
from __future__ import annotations

import copy

import pytest

from megatron_brrm.rollout.chat import (ChatTemplateError, check_template_splice, continuation_ids, followup_suffix_text,
                                       render_prompt_ids)

# Like Qwen3's template: the final assistant message (after the last user turn) is rendered
# with an empty think block, earlier ones are not; so [u, a, u] does not extend [u, a].
QWEN3_LIKE = (
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' and loop.last %}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Closes assistant turns with a newline before the end token: cannot be spliced after an EOS.
NEWLINE_BEFORE_EOS = (
    "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '\\n<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
DROPS_ASSISTANT = (
    "{%- for m in messages %}{%- if m.role != 'assistant' %}{{- '<|im_start|>' + m.role + '\\n' + m.content"
    " + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def tok(tiny_qwen3_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen3_dir)


def with_template(tok, template):
    t = copy.deepcopy(tok)
    t.chat_template = template
    return t


def enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


USER1 = [{"role": "user", "content": "Compare the two answers."}]
USER2 = {"role": "user", "content": "Now decide."}


@pytest.mark.parametrize("template", [None, QWEN3_LIKE])
def test_continuation_after_eos_and_after_length(tok, template):
    t = with_template(tok, template) if template else tok
    suffix = followup_suffix_text(t, USER1, USER2)
    assert suffix == "<|im_end|>\n<|im_start|>user\nNow decide.<|im_end|>\n<|im_start|>assistant\n"
    gen_eos = enc(t, "analysis done") + [t.eos_token_id]
    assert continuation_ids(t, suffix, gen_eos, {t.eos_token_id}) == enc(
        t, "\n<|im_start|>user\nNow decide.<|im_end|>\n<|im_start|>assistant\n")
    check_template_splice(t, suffix, {t.eos_token_id})  # compatible: no error
    # an EOS the template does not close with (<|endoftext|>) stays; the template's close follows
    other_eos = t.convert_tokens_to_ids("<|endoftext|>")
    assert continuation_ids(t, suffix, enc(t, "x") + [other_eos], {t.eos_token_id, other_eos}) == enc(t, suffix)
    gen_cut = enc(t, "analysis that was cut")
    assert continuation_ids(t, suffix, gen_cut, {t.eos_token_id}) == enc(
        t, "<|im_end|>\n<|im_start|>user\nNow decide.<|im_end|>\n<|im_start|>assistant\n")
    # spliced sequence == the template's own rendering of the whole conversation (ChatML template)
    if template is None:
        prompt = render_prompt_ids(t, USER1)
        spliced = prompt + gen_eos + continuation_ids(t, suffix, gen_eos, {t.eos_token_id})
        full = t.apply_chat_template(USER1 + [{"role": "assistant", "content": "analysis done"}, USER2],
                                     tokenize=False, add_generation_prompt=True)
        assert spliced == enc(t, full)


def test_templates_that_cannot_be_spliced_raise(tok):
    t = with_template(tok, NEWLINE_BEFORE_EOS)
    suffix = followup_suffix_text(t, USER1, USER2)
    with pytest.raises(ChatTemplateError, match="does not start with any EOS"):
        check_template_splice(t, suffix, {t.eos_token_id})
    with pytest.raises(ChatTemplateError, match="verbatim"):
        followup_suffix_text(with_template(tok, DROPS_ASSISTANT), USER1, USER2)
    no_template = copy.deepcopy(tok)
    no_template.chat_template = None
    with pytest.raises(ChatTemplateError, match="no chat_template"):
        render_prompt_ids(no_template, USER1)
