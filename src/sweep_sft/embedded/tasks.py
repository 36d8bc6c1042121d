"""The embedded multi-task chat dataset, generated deterministically from a seed.

Eight task types with clearly different answer lengths, so that channel losses and
per-task exact match separate: one-token classifications, short hard answers (addition,
a key looked up in the middle of the prompt), a copy, a long templated forecast, a long JSON
answer and a multi-turn dialogue whose last answer
depends on an earlier turn. Copying tasks are hard for a model this small; that spread
is the point: a sweep shows which tasks a setting learns.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

WORDS = (
    "apple river stone cloud green table window garden silver paper music forest candle "
    "bridge orange winter summer yellow rabbit castle pencil mirror rocket tiger lemon "
    "valley planet violin hammer jacket ocean desert island meadow pepper basket dragon "
    "feather lantern marble needle saddle thunder velvet wagon anchor blanket cactus"
).split()
NAMES = "alice bob carol david emma frank grace henry irene jack karen leo mona nina oscar".split()
CITIES = "paris rome oslo lima cairo tokyo delhi quito dakar hanoi".split()
JOBS = "pilot nurse baker chef judge farmer tailor miner".split()
COLOURS = "red blue green black white purple orange grey".split()
PETS = "cat dog parrot hamster turtle goldfish rabbit pony".split()
POSITIVE = "great lovely wonderful excellent delightful superb pleasant charming".split()
NEGATIVE = "awful terrible dreadful horrible boring dismal nasty rotten".split()
SUBJECTS = "the food|the film|the hotel|the concert|the service|the book|the trip|the game".split("|")
SYSTEM_PROMPTS = ("You are a helpful assistant.", "Answer briefly and exactly.")

Message = dict[str, str]
Record = dict[str, object]


def _chat(rng: random.Random, turns: list[tuple[str, str]]) -> list[Message]:
    messages: list[Message] = []
    if rng.random() < 0.3:  # some examples carry a system prompt, which is never trained on
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    for user, assistant in turns:
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": assistant})
    return messages


def sentiment(rng: random.Random) -> list[Message]:
    positive = rng.random() < 0.5
    adjective = rng.choice(POSITIVE if positive else NEGATIVE)
    subject = rng.choice(SUBJECTS)
    filler = rng.choice(["", " today", " as always", " this time", " again"])
    prompt = rng.choice(["Sentiment of: ", "Is this positive or negative? ", "Classify: "])
    text = f"{prompt}{subject} was {adjective}{filler}."
    return _chat(rng, [(text, "positive" if positive else "negative")])


def copy_words(rng: random.Random) -> list[Message]:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7)))
    prompt = rng.choice(["Repeat exactly: ", "Copy this: ", "Say again: "])
    return _chat(rng, [(prompt + words, words)])


TOPICS = {
    "sport": "striker goal referee match tennis stadium coach league".split(),
    "food": "recipe soup bread dessert spices oven noodles salad".split(),
    "travel": "flight hotel passport luggage beach museum train map".split(),
    "science": "atom telescope protein experiment laser fossil gravity cell".split(),
}


def topic(rng: random.Random) -> list[Message]:
    label = rng.choice(sorted(TOPICS))
    a, b = rng.sample(TOPICS[label], 2)
    prompt = rng.choice(["Topic of: ", "Which topic? ", "Label the topic: "])
    text = rng.choice([f"a story about the {a} and the {b}.", f"notes on {a}, {b} and {rng.choice(WORDS)}."])
    return _chat(rng, [(prompt + text, label)])


FORECASTS = {
    "sunny": "Expect clear skies and warm sunshine all day, so wear a hat.",
    "rainy": "Expect steady rain from morning to night, so take an umbrella.",
    "snowy": "Expect heavy snow and icy roads, so stay warm and drive slowly.",
    "windy": "Expect strong gusts in the afternoon, so secure loose objects.",
    "foggy": "Expect thick fog until noon, so drive with your lights on.",
}


def forecast(rng: random.Random) -> list[Message]:
    # A long answer fixed by one classification: tests length and EOS, not copying.
    condition = rng.choice(sorted(FORECASTS))
    when = rng.choice(["today", "tomorrow", "this weekend", "on monday", "tonight"])
    prompt = rng.choice(
        [
            f"Forecast for {rng.choice(CITIES)} {when}: {condition}.",
            f"It will be {condition} in {rng.choice(CITIES)} {when}. Advice?",
            f"Weather {when} in {rng.choice(CITIES)} is {condition}. What should I expect?",
        ]
    )
    return _chat(rng, [(prompt, FORECASTS[condition])])


def to_json(rng: random.Random) -> list[Message]:
    fields = {"name": rng.choice(NAMES), "age": rng.randint(18, 90), "city": rng.choice(CITIES)}
    if rng.random() < 0.5:
        fields["job"] = rng.choice(JOBS)
    described = ", ".join(f"{key} {value}" for key, value in fields.items())
    prompt = rng.choice(["Write JSON for: ", "As a JSON object: "])
    return _chat(rng, [(prompt + described, json.dumps(fields))])


def addition(rng: random.Random) -> list[Message]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    prompt = rng.choice([f"What is {a} + {b}?", f"Add {a} and {b}.", f"{a} plus {b} ="])
    return _chat(rng, [(prompt, str(a + b))])


def key_lookup(rng: random.Random) -> list[Message]:
    keys = rng.sample(WORDS, 8)
    values = [rng.randint(10, 99) for _ in keys]
    table = ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))
    index = rng.randint(2, 5)  # always from the middle of the prompt, never an end
    question = f"Codes: {table}. What is the code for {keys[index]}?"
    return _chat(rng, [(question, str(values[index]))])


FACTS = {
    "colour": ("My favourite colour is {}.", "What is my favourite colour?", COLOURS),
    "pet": ("My pet is a {}.", "What is my pet?", PETS),
    "city": ("I live in {}.", "Where do I live?", CITIES),
    "name": ("My name is {}.", "What is my name?", NAMES),
}


def multi_turn(rng: random.Random) -> list[Message]:
    kinds = rng.sample(sorted(FACTS), rng.randint(2, 3))
    values = {kind: rng.choice(FACTS[kind][2]) for kind in kinds}
    turns = [(FACTS[kind][0].format(values[kind]), f"Noted: {values[kind]}.") for kind in kinds]
    asked = rng.choice(kinds)
    turns.append((FACTS[asked][1], values[asked]))
    return _chat(rng, turns)


TASKS: dict[str, Callable[[random.Random], list[Message]]] = {
    "classification/sentiment": sentiment,
    "transform/copy": copy_words,
    "classification/topic": topic,
    "generation/forecast": forecast,
    "format/json": to_json,
    "reasoning/addition": addition,
    "retrieval/key_lookup": key_lookup,
    "dialogue/multi_turn": multi_turn,
}


def generate(n_train_per_task: int, n_val_per_task: int, seed: int) -> tuple[list[Record], list[Record]]:
    """Train and validation records; no validation conversation also appears in train."""
    rng = random.Random(seed)
    train: list[Record] = []
    val: list[Record] = []
    for task_type, make in TASKS.items():
        seen: set[str] = set()
        for _ in range(n_train_per_task):
            messages = make(rng)
            seen.add(_key(messages))
            train.append({"task_type": task_type, "messages": messages})
        kept = 0
        for _ in range(100 * n_val_per_task):
            if kept == n_val_per_task:
                break
            messages = make(rng)
            if _key(messages) in seen:
                continue
            seen.add(_key(messages))
            val.append({"task_type": task_type, "messages": messages})
            kept += 1
        if kept < n_val_per_task:
            raise RuntimeError(f"{task_type}: only {kept} validation examples differ from train")
    rng.shuffle(train)
    return train, val


def _key(messages: list[Message]) -> str:
    return json.dumps([m for m in messages if m["role"] != "system"])


def all_texts(records: list[Record]) -> list[str]:
    """Every message content, separately: the tokenizer is trained on these."""
    return [m["content"] for r in records for m in r["messages"]]  # type: ignore[index,union-attr]
