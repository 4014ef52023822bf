"""Built-in benchmark prompts, written for this project (not taken from the training text).

"story": openings to continue. "passage": a short story followed by its first sentence again, so
the model's continuation re-quotes the passage, as in summarising or quoting a document (RAG).
"""
from __future__ import annotations

STORY_OPENINGS = [
    "Once upon a time, there was a little girl named Mia who found a tiny key in the garden.",
    "Tom and his dog Max went to the beach on a sunny morning. The waves were big and blue.",
    "In a small town, there lived an old baker who made the best bread in the world.",
    "One rainy day, a little bird could not find its way home.",
    "Sara wanted to build the tallest tower of blocks in her class.",
    "Ben had a red kite, and he loved to fly it in the park with his dad.",
    "There was a shy little bunny who lived under a big oak tree.",
    "Lily and her brother found a map in the attic. It showed a path to a hidden pond.",
]

PASSAGES = [
    "Anna had a yellow boat. Every morning she took the boat to the lake and sailed it near the "
    "ducks. One day the wind pushed the boat far away. Anna was sad, but a kind fisherman "
    "brought it back. Anna said thank you and gave him a flower. From that day on, they were friends.",
    "Leo the little lion did not like to roar. The other lions laughed at him. One night a storm "
    "came and the baby animals were scared. Leo sang a soft song, and everyone felt calm. The "
    "lions learned that a gentle voice can be strong too.",
    "The moon wanted to visit the sun, but they were never in the sky at the same time. One day "
    "the moon asked the stars for help. The stars made a bright bridge of light. The moon walked "
    "across and said hello to the sun. They smiled and shared the sky for a short time.",
    "Max found a small box under his bed. Inside there was an old photo of his grandma as a girl. "
    "She was holding a puppy and laughing. Max showed the photo to his grandma. She told him the "
    "puppy was named Button, and she had loved him very much.",
]


# Requests a chat model's user sends, two per category, written for this project (topics and
# passages differ from the generated requests the shipped chat heads were distilled on:
# mlx_spec/train/instructions.py). `mlxspec bench --prompts chat` uses them with the chat template.
CHAT_PROMPTS = [
    ("writing", "Write a short poem about a lighthouse keeper who waits for a ship."),
    ("writing", "Write a friendly email inviting my neighbours to a garden barbecue on Saturday."),
    ("explanation", "Why do leaves change colour in autumn? Explain it simply."),
    ("explanation", "What is the difference between weather and climate?"),
    ("coding", "Write a Python function that returns the second largest number in a list."),
    ("coding", "Write a JavaScript function that capitalises the first letter of every word."),
    ("math", "A rectangle has a perimeter of 36 cm and a width of 7 cm. What is its length?"),
    ("math", "If I save 45 dollars every week, how much will I have after 18 weeks?"),
    ("rewriting", "Rewrite this to sound more professional: \"yo, cant make the call today, "
                  "something came up, lets do tmrw\""),
    ("rewriting", "Make this sentence shorter and clearer: \"In the event that it happens to "
                  "rain on the day of the picnic, we will be moving everything indoors.\""),
    ("summarise", "Summarise in one sentence: The city library will extend its opening hours "
                  "from next month. On weekdays it will stay open until 9 pm, and on Sundays it "
                  "will open at noon. The change follows a survey in which most readers asked for "
                  "evening access. Two new staff members have been hired to cover the extra hours."),
    ("summarise", "Give a two-sentence summary: Marco started a bicycle repair workshop in his "
                  "garage in 2019. Neighbours brought their bikes, and soon he had a waiting list. "
                  "In 2022 he rented a small shop near the station and hired his cousin Elena. "
                  "Today the shop also teaches children how to fix a flat tyre."),
    ("extraction", "List the names, dates and amounts in this text: On 3 April, Priya Natarajan "
                   "paid 1,250 euros for the hall rental, and on 9 April Daniel Okafor paid 340 "
                   "euros for the catering. The event took place on 15 April."),
    ("extraction", "From this message, give me the meeting time, the place and who is coming: "
                   "\"Hi all, the planning meeting is moved to Wednesday at 2:30 pm in room B12. "
                   "Jonas, Mei and Carla will join; Peter is away.\""),
    ("transform", "Translate into French: \"The bakery on the corner opens at seven every morning.\""),
    ("transform", "Turn this into a numbered list of steps: first boil the water, then add the "
                  "pasta, cook it for ten minutes, drain it and finally mix in the sauce."),
]


# Sixteen more requests, two per category, written after `auto`'s rules and constants were set
# (only its shadow trees counted while followed, Auto._pairing, came after them: prompted by
# the short table and repeat answers here): eight other kinds of request, some that copy their
# request as a table or a corrected text does. `mlxspec bench --prompts chat2` checks a change
# on requests other than those it was measured on.
MORE_CHAT_PROMPTS = [
    ("advice", "I have trouble falling asleep at night. Give me some practical tips."),
    ("advice", "How can I prepare for my first job interview at a bookshop?"),
    ("story", "Tell a short story about a cat who wants to learn to swim."),
    ("story", "Write a bedtime story about a small robot that lost its key."),
    ("facts", "What are the planets of the solar system, in order from the sun?"),
    ("facts", "Name three famous rivers in Africa and one fact about each."),
    ("codefix", "Fix the bug in this Python code: def add_all(xs):\n    total = 0\n    for x in "
                "xs:\n        total = x\n    return total"),
    ("codefix", "This Python code should print the numbers 1 to 10 but prints 0 to 9. Fix it: "
                "for i in range(10): print(i)"),
    ("reasoning", "Tom is taller than Sam, and Sam is taller than Lily. Who is the shortest? "
                  "Explain."),
    ("reasoning", "A train leaves at 3:40 pm and the trip takes 2 hours and 35 minutes. When "
                  "does it arrive?"),
    ("reply", "Reply politely to this message from a customer: \"My order number 4471 arrived "
              "with a broken handle on the teapot. What can you do?\""),
    ("reply", "Write a short answer to my friend who asked: \"Do you want to come hiking with "
              "us on Sunday morning at 8?\" I can't come because I work."),
    ("table", "Make a table with three fruits, their colour and their season."),
    ("table", "Put these people in a table with name and city: Anna lives in Oslo, Ben in Lyon, "
              "Chiara in Turin and Dev in Pune."),
    ("repeat", "Repeat the following sentence three times, each on its own line: The quick "
               "brown fox jumps over the lazy dog."),
    ("repeat", "Correct the spelling in this text and give back the whole text: \"Yesterday I "
               "went to the libary and borowed two books about astronomy and one about the "
               "ocean.\""),
]

CHAT_SETS = {"chat": CHAT_PROMPTS, "chat2": MORE_CHAT_PROMPTS}  # the names `--prompts` takes


def chat_prompts(name: str = "chat") -> list[dict]:
    """[{"id", "category", "prompt"}] of the chat requests CHAT_SETS[name]."""
    counts: dict = {}
    prompts = []
    for category, text in CHAT_SETS[name]:
        counts[category] = counts.get(category, -1) + 1
        prompts.append({"id": f"{category}-{counts[category]}", "category": category, "prompt": text})
    return prompts


def passage_prompt(passage: str) -> str:
    first_sentence = passage.split(". ")[0] + "."
    return f"{passage}\n\n{first_sentence}"


def builtin_prompts() -> list[dict]:
    """[{"id", "category", "prompt"}]"""
    prompts = [{"id": f"story-{i}", "category": "story", "prompt": p}
               for i, p in enumerate(STORY_OPENINGS)]
    prompts += [{"id": f"passage-{i}", "category": "passage", "prompt": passage_prompt(p)}
                for i, p in enumerate(PASSAGES)]
    return prompts
