"""A small statistical truecaser: restores capitals in lowercase English story text.

Learned from cased text: sentence starts are capitalised, and a word is capitalised elsewhere when
its capitalised form is the majority in non-initial positions of the cased text (names, "I").
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

_WORD = re.compile(r"[A-Za-z][A-Za-z']*")
# a sentence starts at the text start, after .!? + spaces, or after an opening quote
_SENTENCE_START = re.compile(r'(^|[.!?]["\']?\s+|\n\s*|(?:^|\s)["\'])$')


def _is_sentence_start(text: str, start: int) -> bool:
    return bool(_SENTENCE_START.search(text[max(0, start - 4):start])) or start == 0


@dataclass
class Truecaser:
    capitalised: frozenset[str]

    @classmethod
    def fit(cls, cased_texts: list[str], min_count: int = 2) -> "Truecaser":
        upper, total = Counter(), Counter()
        for text in cased_texts:
            for m in _WORD.finditer(text):
                if _is_sentence_start(text, m.start()):
                    continue
                word = m.group()
                total[word.lower()] += 1
                upper[word.lower()] += word[0].isupper()
        keep = {w for w, n in total.items() if n >= min_count and upper[w] * 2 > n}
        return cls(frozenset(keep))

    def apply(self, text: str) -> str:
        def fix(m: re.Match) -> str:
            word = m.group()
            if word.lower() in self.capitalised or _is_sentence_start(text, m.start()):
                return word[0].upper() + word[1:]
            return word

        return _WORD.sub(fix, text)
