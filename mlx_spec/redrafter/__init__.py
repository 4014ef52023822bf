"""ReDrafter: a recurrent draft head on the target's hidden states, beam search, and the tree the
beams make (shared prefixes merged) for one-pass verification."""
from .beam_search import Beams, beam_search, warp_top_k
from .model import DrafterConfig, RecurrentDrafter, load_drafter, save_drafter

__all__ = ["Beams", "beam_search", "warp_top_k", "DrafterConfig", "RecurrentDrafter",
           "load_drafter", "save_drafter"]
