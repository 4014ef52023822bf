"""What drafting methods keep beside one loaded target (`SpecModel.extras`), shared by every
decoder of that model: the models they load once, and what they learn across requests.

One typed place, a field per kind, so that a reader sees at once what lives beside a target and
who fills it; the keys inside each field are the settings that make two drafters share or not."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..cost import CostModel, cost_model
from ..paths import cache_root


@dataclass
class Shared:
    draft_models: dict = field(default_factory=dict)   # draft folder -> draft_model.DraftModel
    heads: dict = field(default_factory=dict)          # redrafter (head folder, draft_vocab) -> (head, tables)
    draft_lengths: dict = field(default_factory=dict)  # (method, settings[, regime]) -> DraftChooser
    stop_rules: dict = field(default_factory=dict)     # adaedl (drafter, settings, regime) -> rule
    backoffs: dict = field(default_factory=dict)       # (method, options) -> engine.BackOff
    auto_rates: dict = field(default_factory=dict)     # auto: (candidates, regime) -> its Rates
    auto_folder: Optional[Path] = field(default_factory=lambda: cache_root() / "auto")  # where
    # auto's rates outlive the process (None: in this process only, as in the bench)
    output_trie: Optional[Any] = None                  # lookahead: n-grams of past outputs
    warmed_from: set = field(default_factory=set)      # lookahead: warm-start sources already read
    cost: Optional[CostModel] = None                   # the target's verify cost (cost.py)


class Learned:
    """What a drafter learns, one entry per key (its settings and sampling regime), kept as long
    as a seed allows. What never changes the text (the sizes of greedy drafts; everything of pld
    and lookahead, whose drafts never change the output) lives in `store` and carries over to the
    next request and decoder: `store` is a field of the loaded target's Shared, or the drafter's
    own dict where there is no model. What shapes a sampled text (a model drafter's sampled draft
    sizes, adaedl's sampled stop rule) lives for one request (begin), so that a seed gives one
    text, unless `carried`: set through Drafter.keep_learning wherever no seed reproduces the text
    anyway (the engine's back-off, whose pauses follow the clock, is on; inside auto)."""

    def __init__(self, store: dict):
        self.store, self.carried = store, False
        self._request: dict = {}  # what shapes a sampled text, this request's (not carried)

    def begin(self) -> None:
        """A new request: what shapes a sampled text starts afresh unless carried."""
        self._request = {}

    def get(self, key, make: Callable[[], Any], shapes_text: bool = False):
        """The entry of `key`, made by `make()` where there is none yet in its place."""
        place = self._request if shapes_text and not self.carried else self.store
        if key not in place:
            place[key] = make()
        return place[key]


def loaded_only(state: Shared) -> Shared:
    """The same loaded models, cost model and rates folder, nothing learned (the bench's next
    round)."""
    return Shared(draft_models=state.draft_models, heads=state.heads, cost=state.cost,
                  auto_folder=state.auto_folder)


def shared(model) -> Shared:
    """The drafters' shared state of a loaded SpecModel (made on first use)."""
    if model.extras is None:
        model.extras = Shared()
    return model.extras


def target_cost(model, refresh: bool = False) -> CostModel:
    """The loaded target's measured verify cost, read (or measured) once per loaded model rather
    than on every decoder: finding its file fingerprints the weights. `refresh` measures it again
    (the bench: today's machine and load) for every decoder made after."""
    state = shared(model)
    if state.cost is None or refresh:
        state.cost = cost_model(model, refresh=refresh)
    return state.cost
