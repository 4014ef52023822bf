"""ReDrafter: a recurrent draft head on the target's hidden states (head.py), beam search and
sampled chains over it, and the method `redrafter` that proposes their tree (method.py)."""
from .beam_search import Beams, beam_search, warp_top_k
from .head import DrafterConfig, RecurrentDrafter, load_drafter, save_drafter
from . import method  # noqa: E402,F401  (registers the method "redrafter")

__all__ = ["Beams", "beam_search", "warp_top_k", "DrafterConfig", "RecurrentDrafter",
           "load_drafter", "save_drafter"]
