"""Which tokens of a rendered conversation are the assistant's, for any chat template.

A template with {% generation %} markers says so itself: transformers' assistant mask is used as
is. Most instruct models' templates have none; then each assistant turn is read off the template.
Rendered turn by turn, the prompt before assistant message i (messages[:i] with the generation
prompt) and the conversation up to it (messages[:i+1]) are prefixes of the whole conversation's
rendering, and the turn is the text between them, cut right after its end-of-turn token (the
whitespace a template writes after that token is no part of what the model generates). Some
templates render an earlier turn differently once later turns follow (Qwen3 drops its <think>
block; Mistral's move the system prompt into the last user turn), which breaks that chain for those
turns: they are found by their text in the whole rendering instead, after the turns before them.
Character spans become token spans through the fast tokenizer's offsets, by transformers' own
rule for its marker mask (a token overlapping a span is in it), on exactly the tokens
apply_chat_template(tokenize=True) gives, so both ways agree wherever both apply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sweep_sft.data.records import Example
from sweep_sft.errors import ConfigError, DataError

# transformers' own test for a template that marks assistant tokens.
GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")
MARKERS = "markers"  # the template's {% generation %} blocks
RENDERING = "rendering"  # read off the template's renderings
Span = tuple[int, int]


@dataclass
class AssistantTokens:
    """Token ids of each example as the chat template renders it, and the token span [start, end)
    of each of its assistant turns, in order; `how` says how the turns were found."""

    input_ids: list[list[int]]
    turns: list[list[Span]]
    how: str


class UnreadableTurn(Exception):
    """An assistant turn whose place in the rendering neither way can find."""

    def __init__(self, turn: int, message: int):
        super().__init__(turn, message)
        self.turn, self.message = turn, message


def has_generation_markers(template: str | None) -> bool:
    """Whether the template marks assistant tokens with {% generation %}...{% endgeneration %}."""
    return bool(template) and GENERATION_MARKER.search(template) is not None


def assistant_tokens(examples: list[Example], tokenizer, end_of_turn: str) -> AssistantTokens:
    """The rendered token ids and assistant turns of each example: from the template's generation
    markers where it has them, else read off its renderings (`end_of_turn`: the text of the token
    that closes a turn)."""
    if not examples:
        return AssistantTokens([], [], MARKERS)
    conversations = [list(e.messages) for e in examples]
    sources = [e.source for e in examples]
    if has_generation_markers(tokenizer.get_chat_template()):
        out = _named(
            lambda batch: tokenizer.apply_chat_template(
                batch, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            ),
            conversations,
            sources,
        )
        return AssistantTokens(out["input_ids"], [mask_runs(m) for m in out["assistant_masks"]], MARKERS)
    return _from_renderings(examples, conversations, sources, tokenizer, end_of_turn)


def mask_runs(mask: list[int]) -> list[Span]:
    """[start, end) of each run of 1s."""
    spans: list[Span] = []
    start = None
    for i, flag in enumerate([*mask, 0]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            spans.append((start, i))
            start = None
    return spans


def _from_renderings(examples, conversations, sources, tokenizer, end_of_turn: str) -> AssistantTokens:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"the tokenizer ({type(tokenizer).__name__}) gives no character offsets, so the assistant tokens of a "
            "chat template without {% generation %} markers cannot be found; load a fast tokenizer (tokenizer.json), "
            "or set model.chat_template_path to the template with {% generation %}...{% endgeneration %} around "
            "each assistant turn"
        )
    rendered = _named(lambda batch: tokenizer.apply_chat_template(batch, tokenize=False), conversations, sources)
    # Exactly what apply_chat_template(tokenize=True) encodes, with the offsets the spans need.
    encoded = _named(
        lambda texts: tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True), rendered, sources
    )
    prompts, fulls = _turn_renderings(tokenizer, conversations, rendered)
    turns = []
    for k, example in enumerate(examples):
        try:
            spans = char_spans(example.messages, rendered[k], prompts[k], fulls[k], end_of_turn)
        except UnreadableTurn as turn:
            raise DataError(
                f"{example.source}: assistant turn {turn.turn} (messages[{turn.message}]) cannot be found in the "
                "chat template's rendering: the template has no {% generation %} markers, and neither rendering "
                "the conversation turn by turn nor finding the turn's text in it shows where the turn is; set "
                "model.chat_template_path to a copy of the template with {% generation %}...{% endgeneration %} "
                "around each assistant turn's content and end-of-turn token"
            ) from None
        turns.append(token_spans(encoded["offset_mapping"][k], spans))
    return AssistantTokens(encoded["input_ids"], turns, RENDERING)


def _turn_renderings(tokenizer, conversations, rendered) -> tuple[list[dict], list[dict]]:
    """Per conversation, {message index: rendering} of the prompt before each assistant message
    and of the conversation up to it (None where the template refuses that part), each batched."""
    prompt_parts, full_parts = [], []
    prompts: list[dict[int, str | None]] = [{} for _ in conversations]
    fulls: list[dict[int, str | None]] = [{} for _ in conversations]
    for k, conversation in enumerate(conversations):
        for i, message in enumerate(conversation):
            if message["role"] != "assistant":
                continue
            if i == 0:
                prompts[k][i] = ""  # a template renders no conversation without a message
            else:
                prompt_parts.append((k, i))
            if i == len(conversation) - 1:
                fulls[k][i] = rendered[k]  # the conversation up to its last message is the whole one
            else:
                full_parts.append((k, i))
    for parts, out, upto in ((prompt_parts, prompts, 0), (full_parts, fulls, 1)):
        texts = _render_each(tokenizer, [conversations[k][: i + upto] for k, i in parts], generation_prompt=not upto)
        for (k, i), text in zip(parts, texts, strict=True):
            out[k][i] = text
    return prompts, fulls


def _render_each(tokenizer, conversations: list[list[dict]], generation_prompt: bool) -> list[str | None]:
    def render(batch):
        return tokenizer.apply_chat_template(batch, tokenize=False, add_generation_prompt=generation_prompt)

    if not conversations:
        return []
    try:
        return render(conversations)
    except Exception:
        # A template may refuse a part (e.g. a conversation that must end with a user turn): that
        # part is not read, and its turn is looked for in the whole rendering instead.
        out: list[str | None] = []
        for conversation in conversations:
            try:
                out.append(render([conversation])[0])
            except Exception:
                out.append(None)
        return out


def _named(apply, items: list, sources: list[str]):
    """apply(items), or, when that fails, a DataError naming the first record it fails on alone."""
    try:
        return apply(items)
    except Exception as batch_error:
        # The batch error says only what failed: find the record the template or tokenizer cannot take.
        for item, source in zip(items, sources, strict=True):
            try:
                apply([item])
            except Exception as err:
                raise DataError(
                    f"{source}: the tokenizer's chat template cannot take this record "
                    f"({type(err).__name__}: {err}); expected text it can encode"
                ) from None
        raise batch_error


def char_spans(
    messages, rendered: str, prompts: dict[int, str | None], fulls: dict[int, str | None], end_of_turn: str
) -> list[Span]:
    """[start, end) in `rendered` of each assistant message's turn, its end-of-turn text included.
    prompts[i] / fulls[i]: the renderings of messages[:i] with the generation prompt and of
    messages[:i+1], for each assistant message i (None: not rendered)."""
    spans: list[Span] = []
    cursor = 0  # everything before it belongs to earlier messages
    for i, message in enumerate(messages):
        content = message["content"]
        if message["role"] != "assistant":
            cursor = _after_text(rendered, content, cursor)
            continue
        prompt, full = prompts.get(i), fulls.get(i)
        span = _by_prefixes(rendered, prompt, full, end_of_turn)
        if span is None or span[0] < (spans[-1][1] if spans else 0):
            span = _by_text(rendered, content, prompt, full, end_of_turn, cursor)
        if span is None:
            raise UnreadableTurn(len(spans) + 1, i)
        spans.append(span)
        cursor = span[1]
    return spans


def _by_prefixes(rendered: str, prompt: str | None, full: str | None, eot: str) -> Span | None:
    """The turn between the prompt's rendering and the conversation's up to it, when the
    rendering before the turn and the turn up to its end-of-turn text are prefixes of the whole."""
    if prompt is None or full is None or not full.startswith(prompt) or not rendered.startswith(prompt):
        return None
    start = len(prompt)
    common = _common_prefix(full, rendered, start)
    at = rendered.find(eot, start, common)
    if at >= 0:
        return start, at + len(eot)
    if common < len(full):
        return None  # re-rendered differently before its end: read by its text instead
    # The turn carries no end-of-turn text of its own: take one the template writes right after it.
    after = _skip_space(rendered, common)
    if rendered.startswith(eot, after):
        return start, after + len(eot)
    end = len(rendered[start:common].rstrip()) + start
    return (start, end) if end > start else None


def _by_text(rendered: str, content: str, prompt: str | None, full: str | None, eot: str, cursor: int) -> Span | None:
    """The turn found by its text after the messages before it, extended to an end-of-turn text
    right after it; it starts where the generation prompt ends when that prompt is a prefix."""
    anchored = prompt is not None and rendered.startswith(prompt) and len(prompt) >= cursor
    begin = len(prompt) if anchored else cursor
    as_last = _rendered_turn(prompt, full, eot)
    for text in dict.fromkeys((as_last, content, content.strip())):
        at = rendered.find(text, begin) if text else -1
        if at < 0 or (anchored and rendered.find(eot, begin, at) >= 0):
            continue  # not there, or only past another turn's end
        end = at + len(text)
        after = _skip_space(rendered, end)
        if rendered.startswith(eot, after):
            end = after + len(eot)
        return (begin if anchored else at), end
    if anchored and as_last:
        # Rendered shorter once later turns follow (Qwen3 drops an earlier turn's reasoning): the
        # text up to the next end-of-turn is the tail of the turn as rendered last.
        at = rendered.find(eot, begin)
        body = rendered[begin:at].strip() if at >= 0 else ""
        if body and as_last.rstrip().endswith(body):
            return begin, at + len(eot)
    return None


def _rendered_turn(prompt: str | None, full: str | None, eot: str) -> str | None:
    """The turn's text as the template renders it when it is the last message, end-of-turn cut."""
    if prompt is None or full is None or not full.startswith(prompt):
        return None
    at = full.find(eot, len(prompt))
    return full[len(prompt) : at if at >= 0 else len(full)].rstrip() or None


def _after_text(rendered: str, content: str, cursor: int) -> int:
    for text in (content, content.strip()):
        at = rendered.find(text, cursor) if text else -1
        if at >= 0:
            return at + len(text)
    return cursor  # not rendered where it stands (e.g. a system prompt moved into a later turn)


def _common_prefix(a: str, b: str, start: int) -> int:
    if b.startswith(a):
        return len(a)
    i, n = start, min(len(a), len(b))
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def token_spans(offsets: list[tuple[int, int]], spans: list[Span]) -> list[Span]:
    """Token [start, end) of each character span: the tokens that overlap it, the rule
    transformers' {% generation %} mask uses."""
    out: list[Span] = []
    i, n = 0, len(offsets)
    for a, b in spans:
        while i < n and offsets[i][1] <= a:
            i += 1
        start = i
        while i < n and offsets[i][0] < b:
            i += 1
        out.append((start, i))
    return out
