"""Requests for distilling drafters of chat models: made from templates and topics, or written by
the target itself.

The target writes the answers (distill_data.py), so only the requests are made here. Two sources:
- `instruction_prompts`: templates and topics (chat, explanation, coding, math, rewriting,
  summarising a given passage, extraction and translation-like transforms), written for this
  project and generated deterministically from a seed. A few dozen templates are a narrow
  distribution: drafters trained only on them agree with the target far less on requests
  written differently.
- `self_written_requests`: the target's own user turns (Magpie, Xu et al. 2024): given its chat
  template up to where a user message begins, an instruction-tuned model writes requests like those
  it was tuned on, as varied as its tuning data. Sampled at temperature 1 with nucleus 0.95.
The bench's chat prompts (mlx_spec/bench/chat_prompts.jsonl) are written separately, so they stay
held out.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from ..errors import MlxSpecError

TOPICS = [
    "volcanoes", "the water cycle", "photosynthesis", "black holes", "the immune system",
    "electric cars", "compound interest", "the printing press", "honeybees", "coral reefs",
    "solar panels", "the stock market", "earthquakes", "vaccines", "the Roman Empire",
    "machine learning", "recycling", "the moon landing", "rainforests", "the human heart",
    "tides", "inflation", "glaciers", "the internet", "sleep", "bread baking", "chess",
    "the Great Wall of China", "wind turbines", "DNA", "migrating birds", "the Olympic Games",
    "coffee", "gravity", "the French Revolution", "submarines", "antibiotics", "deserts",
    "jazz music", "public libraries", "time zones", "rainbows", "batteries", "octopuses",
    "the Silk Road", "climate change", "3D printing", "the piano", "penguins", "democracy",
]

AUDIENCES = ["a ten-year-old", "a busy manager", "a first-year student", "my grandmother",
             "a curious teenager", "someone new to the subject"]

SKILLS = ["learn a new language", "cook healthy meals on a budget", "start running",
          "save money each month", "study for an exam", "keep a plant alive", "write a cover letter",
          "prepare for a job interview", "get better sleep", "organise a small party",
          "learn to play the guitar", "reduce screen time", "make new friends in a new city",
          "plan a weekend trip", "stay focused while working from home"]

CODING_TASKS = [
    "reverses a string", "checks whether a number is prime", "returns the n-th Fibonacci number",
    "counts the words in a sentence", "removes duplicates from a list while keeping order",
    "computes the average of a list of numbers", "finds the largest element of a list",
    "checks whether a word is a palindrome", "converts Celsius to Fahrenheit",
    "merges two sorted lists", "counts how often each character appears in a string",
    "returns the factorial of n", "flattens a nested list", "sorts a list of names by length",
    "reads a text file and returns its number of lines", "checks whether two words are anagrams",
    "returns the sum of the digits of an integer", "validates a simple email address",
]

LANGUAGES = ["Python", "JavaScript", "Python", "C", "Python", "Java", "Go", "Rust"]

CITIES = ["Lisbon", "Nairobi", "Osaka", "Toronto", "Lima", "Oslo", "Cairo", "Hanoi", "Dublin",
          "Quito", "Perth", "Seville", "Tbilisi", "Accra", "Bergen"]
NAMES = ["Maria Lopez", "James Chen", "Aisha Bello", "Tom Berg", "Sofia Rossi", "Ken Sato",
         "Nina Petrova", "Omar Haddad", "Lucy Grant", "Pedro Alves", "Hana Kim", "Ivan Novak"]
PRODUCTS = ["a coffee maker", "a pair of running shoes", "a laptop stand", "a rain jacket",
            "a desk lamp", "a travel backpack", "a blender", "noise-cancelling headphones"]
FIELDS = ["marine biology", "civil engineering", "nursing", "graphic design", "accounting",
          "software testing", "urban planning", "history teaching"]

STYLE_CHANGES = ["more formal", "more friendly", "shorter", "simpler for a child to read",
                 "more persuasive", "in the passive voice", "in the past tense", "more polite"]

SENTENCES = [
    "hey, the meeting got moved to thursday so dont forget to bring the reports",
    "Our team finished the project two weeks early and under budget.",
    "I can't come to the party because I have to work late tonight.",
    "The new park downtown has a lake, a playground and lots of trees.",
    "Please send me the invoice by Friday so I can pay it on time.",
    "The museum will be closed on Monday for repairs to the roof.",
    "We are looking for volunteers to help clean the beach this weekend.",
    "The train was late again, so I missed the start of the lecture.",
    "Thanks for your help with the move, I couldn't have done it without you.",
    "The results of the survey show that most people prefer walking to work.",
]

TRANSFORMS = [
    ("Translate into French", None), ("Translate into Spanish", None),
    ("Translate into German", None), ("Rewrite in all capital letters", None),
    ("Turn into a bulleted list of the main points", None),
    ("Rewrite as a question", None), ("Convert into a tweet of under 200 characters", None),
    ("Write the opposite statement of", None),
]


def _passage(rng: random.Random) -> str:
    """A short made-up report with names, places, numbers and dates to summarise or extract from."""
    name, other = rng.sample(NAMES, 2)
    city, city2 = rng.sample(CITIES, 2)
    product = rng.choice(PRODUCTS)
    year = rng.randint(1995, 2024)
    people, price = rng.randint(12, 900), rng.randint(15, 480)
    month = rng.choice(["January", "March", "May", "July", "September", "November"])
    kind = rng.randint(0, 2)
    if kind == 0:
        return (f"{name} founded a small company in {city} in {year} to sell {product}. "
                f"By {month} {year + 3} the company had {people} employees and opened a second shop "
                f"in {city2}. Each {product.split(' ', 1)[1]} costs {price} dollars. "
                f"{other}, the head of sales, says most customers come back within a year.")
    if kind == 1:
        return (f"On {rng.randint(1, 28)} {month} {year}, {people} volunteers met in {city} to plant "
                f"trees along the river. The event was organised by {name} and lasted "
                f"{rng.randint(3, 9)} hours. {other} from the city council promised {price} "
                f"new benches for the park by the end of the year.")
    return (f"Dear {other}, I am writing to apply for the position in {rng.choice(FIELDS)} advertised "
            f"in {month}. I studied in {city} and have worked for {rng.randint(2, 15)} years in "
            f"{city2}. I can start on {rng.randint(1, 28)} {month} and expect a salary of "
            f"{price * 100} dollars a year. Kind regards, {name}.")


def _make(category: str, rng: random.Random) -> str:
    topic = rng.choice(TOPICS)
    if category == "chat":
        return rng.choice([
            f"Hi! Can you give me some tips to {rng.choice(SKILLS)}?",
            "I'm bored this evening. What are a few fun things I could do at home?",
            f"What do you think is the most interesting thing about {topic}?",
            f"My friend says {topic} is boring. How would you convince them otherwise?",
            f"Can you recommend how to {rng.choice(SKILLS)} if I only have 20 minutes a day?",
            "Write a short, cheerful good-morning message for my team.",
            f"I have an interview tomorrow for a job in {rng.choice(FIELDS)}. Any advice?",
        ])
    if category == "explanation":
        return rng.choice([
            f"Explain {topic} to {rng.choice(AUDIENCES)}.",
            f"What is {topic} and why does it matter?",
            f"How does {topic} work? Answer in a few short paragraphs.",
            f"Give me three surprising facts about {topic}.",
            f"What are the pros and cons of {topic}?",
            f"Describe the history of {topic} briefly.",
        ])
    if category == "coding":
        language, task = rng.choice(LANGUAGES), rng.choice(CODING_TASKS)
        return rng.choice([
            f"Write a {language} function that {task}.",
            f"Write a {language} function that {task}, and explain how it works.",
            f"How would I write code in {language} that {task}? Include a short example.",
            f"Write a unit test in {language} for a function that {task}.",
        ])
    if category == "math":
        a, b, c = rng.randint(3, 99), rng.randint(2, 60), rng.randint(2, 12)
        return rng.choice([
            f"What is {a} times {b}? Show your working.",
            f"A shop sells pens at {c} dollars each. How much do {a} pens cost?",
            f"If a train travels {a * c} km in {c} hours, what is its average speed?",
            f"Solve for x: {c}x + {b} = {c * a + b}.",
            f"What is {b} percent of {a * 10}?",
            f"I have {a} apples and give away {min(a - 1, b)}. Then I buy {c} more. How many do I have?",
            f"Explain how to find the area of a rectangle that is {a} cm by {b} cm.",
        ])
    if category == "rewriting":
        sentence = rng.choice(SENTENCES)
        return rng.choice([
            f"Rewrite this to be {rng.choice(STYLE_CHANGES)}: \"{sentence}\"",
            f"Fix the grammar and spelling: \"{sentence}\"",
            f"Make this sentence {rng.choice(STYLE_CHANGES)}:\n{sentence}",
            f"Paraphrase the following in two different ways: {sentence}",
        ])
    if category == "summarise":
        passage = _passage(rng)
        return rng.choice([
            f"Summarise this text in one sentence:\n\n{passage}",
            f"Summarise the following passage in two sentences.\n\n{passage}",
            f"{passage}\n\nWhat is the main point of this text?",
            f"Give a short title and a summary for this text:\n{passage}",
        ])
    if category == "extraction":
        passage = _passage(rng)
        return rng.choice([
            f"List every person and place mentioned in this text:\n\n{passage}",
            f"Extract all numbers and dates from the text below and say what each refers to.\n\n{passage}",
            f"From this text, return a JSON object with the keys name, city and year:\n{passage}",
            f"{passage}\n\nWho is mentioned in the text above, and what do they do?",
            f"Copy the sentences that mention money from this text:\n{passage}",
        ])
    if category == "transform":
        instruction, _ = rng.choice(TRANSFORMS)
        return f"{instruction}: \"{rng.choice(SENTENCES)}\""
    raise ValueError(f"unknown category {category}")


CATEGORIES = ("chat", "explanation", "coding", "math", "rewriting", "summarise", "extraction",
              "transform")


def instruction_prompts(count: int, seed: int = 0) -> list[dict]:
    """`count` distinct requests ({"category", "prompt"}), categories in turn; deterministic."""
    rng = random.Random(seed)
    prompts, seen = [], set()
    attempts = 0
    while len(prompts) < count and attempts < count * 50:
        category = CATEGORIES[attempts % len(CATEGORIES)]
        attempts += 1
        text = _make(category, rng)
        if text not in seen:
            seen.add(text)
            prompts.append({"category": category, "prompt": text})
    return prompts


MARKER = "\u2063REQUEST\u2063"  # stands for the request while the chat template is cut in two


def _user_turn(tokenizer) -> tuple[str, str]:
    """(text before a user message, text that ends it) in the target's chat template."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": MARKER}],
                                         add_generation_prompt=False, tokenize=False)
    before, after = text.split(MARKER, 1)
    return before, (after.strip().splitlines() or [""])[0]


def _write_batch(model, tokenizer, prefix: list[int], end: str, eos: set, rows: int,
                 max_tokens: int, temperature: float, top_p: float, seed: int) -> list:
    """One batch of user turns sampled after `prefix` (one shared prompt, so no padding); None
    for a turn that did not end within max_tokens."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.sample_utils import make_sampler

    mx.random.seed(seed)
    sample = make_sampler(temperature, top_p=top_p)
    cache = make_prompt_cache(model)
    logits = model(mx.array([prefix] * rows), cache=cache)[:, -1]
    written, done = [], np.zeros(rows, dtype=bool)
    for _ in range(max_tokens):
        token = sample(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
        written.append(np.array(token))
        done |= np.isin(written[-1], list(eos))
        if done.all():
            break
        logits = model(token[:, None], cache=cache)[:, -1]
    turns = []
    for row in np.stack(written, axis=1):
        stops = np.flatnonzero(np.isin(row, list(eos)))
        text = tokenizer.decode([int(t) for t in row[:stops[0] if len(stops) else len(row)]])
        ended = len(stops) > 0
        if end and end in text:  # a template whose turns do not end with an EOS token
            text, ended = text.split(end, 1)[0], True
        turns.append(text.strip() if ended else None)
    return turns


def self_written_requests(model, tokenizer, count: int, folder: Path, eos: set, seed: int = 0,
                          batch: int = 48, max_tokens: int = 64, temperature: float = 1.0,
                          top_p: float = 0.95, progress: str = "requests written by the target"
                          ) -> list[dict]:
    """`count` distinct requests ({"category": "self-written", "prompt"}) the target writes as
    user turns. Batches are stored in `folder` as they are written (an interrupted run resumes),
    and batch i is drawn from seed (seed, i) alone, so the result is deterministic. Turns that do
    not end within max_tokens, are shorter than 12 characters or carry chat markup are dropped."""
    from .progress import TrainingProgress

    before, end = _user_turn(tokenizer)
    hf = getattr(tokenizer, "_tokenizer", tokenizer)  # mlx-lm's TokenizerWrapper holds the HF one
    markup = {m for m in [*getattr(hf, "all_special_tokens", []), end, MARKER] if m}
    prefix = list(tokenizer.encode(before, add_special_tokens=False))
    folder.mkdir(parents=True, exist_ok=True)
    requests, seen, i = [], set(), 0
    planned = -(-count * 5 // 4 // batch)  # about a fifth are dropped or repeated
    with TrainingProgress(progress, planned) as bar:
        while len(requests) < count:
            if i >= 8 * planned:
                raise MlxSpecError(f"the target wrote only {len(requests)} usable requests of "
                                   f"{count} in {i} batches")
            stored = folder / f"requests-{i:05d}.json"
            if stored.exists():
                turns = json.loads(stored.read_text())
            else:
                turns = _write_batch(model, tokenizer, prefix, end, eos, batch, max_tokens,
                                     temperature, top_p, seed * 100003 + i)
                tmp = stored.with_name(stored.stem + ".tmp")
                tmp.write_text(json.dumps(turns))
                tmp.rename(stored)
            for text in turns:
                if (text and len(text) >= 12 and text not in seen and len(requests) < count
                        and not any(m in text for m in markup)):
                    seen.add(text)
                    requests.append({"category": "self-written", "prompt": text})
            i += 1
            if i <= planned:
                bar.update(i, requests=len(requests))
    return requests
