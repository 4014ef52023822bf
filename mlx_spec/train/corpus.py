"""TinyStories-style text -> clean, normal-case stories with a held-out split.

The shared corpus is 4 MB of lowercase stories whose first ~0.9 MB also exists in original case.
Training on lowercase alone would leave the model lost on normal-case prompts, so we recase the
lowercase remainder with a truecaser learned from the cased part (see truecase.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import MlxSpecError
from .truecase import Truecaser

# UTF-8 read as cp1252 and re-encoded: the original data carries a few of these.
_MOJIBAKE = {
    "â€™": "'", "â€˜": "'", "â€œ": '"', "â€\x9d": '"', "â€": '"', "â€¦": "...",
    "â€“": "-", "â€”": "-", "Ã©": "é", "Â": "",
}


def clean(text: str) -> str:
    for bad, good in _MOJIBAKE.items():
        text = text.replace(bad, good)
    return text.replace("“", '"').replace("”", '"').replace("‘", "'").replace("’", "'")


def split_stories(text: str) -> list[str]:
    """Stories are separated by a single newline, paragraphs inside one by a blank line."""
    stories, paragraphs, previous_blank = [], [], True
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            previous_blank = True
            continue
        if not previous_blank and paragraphs:
            stories.append("\n\n".join(paragraphs))
            paragraphs = []
        paragraphs.append(line)
        previous_blank = False
    if paragraphs:
        stories.append("\n\n".join(paragraphs))
    return stories


@dataclass
class Corpus:
    train: list[str]
    heldout: list[str]


def load_corpus(text_path: str | Path, cased_path: str | Path | None = None,
                heldout_fraction: float = 0.05) -> Corpus:
    """Read stories; if a cased prefix file is given, recase the rest of the lowercase text.

    The held-out split is the last `heldout_fraction` of stories, so it is never trained on.
    """
    text = clean(Path(text_path).read_text(encoding="utf-8", errors="replace"))
    stories = split_stories(text)
    if len(stories) < 2:  # (one for training, one held out; an empty file failed in the tokenizer)
        raise MlxSpecError(f"{text_path}: found {len(stories)} stories; training needs at least "
                           "two (stories are separated by newlines)")
    if cased_path is not None:
        cased = split_stories(clean(Path(cased_path).read_text(encoding="utf-8", errors="replace")))
        truecaser = Truecaser.fit(cased)
        n_cased = len(cased)
        if [s.lower() for s in cased[:50]] != [s.lower() for s in stories[:50]]:
            raise ValueError("the cased file must be a prefix of the main text file")
        stories = cased + [truecaser.apply(s) for s in stories[n_cased:]]
    n_heldout = max(1, int(len(stories) * heldout_fraction))
    return Corpus(train=stories[:-n_heldout], heldout=stories[-n_heldout:])
