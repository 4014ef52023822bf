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
