"""`dsi`: distributed speculative inference (speculation parallelism). It is not a single-process
drafter: the drafter runs ahead while target copies in worker processes verify successive blocks
in parallel. The registry entry makes the name known (methods, option checks); api.make_decoder
builds mlx_spec.dsi's decoder for it."""
from __future__ import annotations

from typing import Optional

from ..errors import MlxSpecError
from . import register


@register("dsi")
def dsi_method(model, workers: int = 2, lookahead: int = 4, drafter: str = "draft",
               draft_model: Optional[str] = None, job_timeout: float = 120.0,
               num_draft_tokens: Optional[int] = None, **drafter_options):
    raise MlxSpecError("dsi runs its own decoder over worker processes: use "
                       "mlx_spec.make_decoder(model, 'dsi', ...) or generate(..., method='dsi')")
