"""`dsi` as a decoder with the engine's face: generate() yields engine Steps, so the API, the
CLI and streaming treat it like every other method (registered in mlx_spec.methods as "dsi")."""
from __future__ import annotations

import inspect
import sys
import time
from typing import Iterator, Optional

from .. import drafters
from ..drafters.base import check_draft_size
from ..engine import Limits, Step, check_request
from ..errors import MlxSpecError
from ..loading import SpecModel
from ..sampling import SamplingParams
from ..stats import GenerationStats
from .drafting import ThreadedDrafting
from .orchestrator import Orchestrator


def _tell_user(worker: int, reason: str) -> None:
    print(f"warning: DSI worker {worker} failed ({reason}); its jobs go to the other workers",
          file=sys.stderr, flush=True)


class DsiDecoder:
    def __init__(self, orchestrator: Orchestrator, method: str = "dsi", drafting=None,
                 block: Optional[int] = None):
        self.orchestrator = orchestrator
        self.method = method
        self.drafting = drafting or orchestrator.lane.drafting
        self.block = block or orchestrator.block

    target = None  # verification happens in the workers, each with its own cache

    def reset(self) -> None:
        """Workers reuse their caches by common prefix; nothing to reset here."""

    def reusable(self, prompt_tokens) -> int:
        return 0  # held by the workers, not known here

    def generate(self, prompt_tokens: list[int], limits: Limits, sampling: SamplingParams,
                 seed: Optional[int] = None) -> Iterator[Step]:
        check_request(prompt_tokens, limits)
        stats = GenerationStats(method=self.method, prompt_tokens=len(prompt_tokens))
        orch = self.orchestrator
        orch.lane.drafting, orch.block = self.drafting, self.block  # this decoder's drafter
        t0 = time.perf_counter()
        orch.prefill(list(prompt_tokens), sampling)
        stats.prefill_s = time.perf_counter() - t0
        seed = seed if seed is not None else time.time_ns() % (1 << 31)
        start = time.perf_counter()
        applied = 0
        for commit in orch.generate(list(prompt_tokens), limits.max_tokens, sampling,
                                    limits.eos_token_ids, limits.context_length, seed):
            c = orch.counters
            stats.generated_tokens += len(commit.tokens)
            stats.accepted_per_call.extend([0] * (c.jobs_applied - applied))
            if stats.accepted_per_call:
                stats.accepted_per_call[-1] += len(commit.tokens) + (commit.finish == "stop")
            applied = c.jobs_applied
            stats.target_calls = c.jobs_applied
            stats.drafted_tokens, stats.accepted_drafts = c.drafted, c.accepted
            stats.draft_s, stats.verify_s = c.draft_s, c.wait_s
            stats.other_s = max(0.0, time.perf_counter() - start - c.draft_s - c.wait_s)
            yield Step(commit.tokens, commit.finish, stats)


def _drafter_options(name: str, block: int, draft_model, options: dict) -> dict:
    factory_params = inspect.signature(drafters._REGISTRY[name]).parameters
    if "num_draft_tokens" in factory_params:
        options.setdefault("num_draft_tokens", block)
        if "adaptive" in factory_params:  # DSI speculates whole blocks: a draft model drafts
            options.setdefault("adaptive", False)  # all of them, whatever its verify costs
    if draft_model is not None:
        options["draft_model"] = draft_model
    return options


def make_dsi_decoder(model: SpecModel, workers: int = 2, block: int = 4,
                     drafter: str = "draft", draft_model: Optional[str] = None,
                     job_timeout: float = 120.0, min_job_timeout: float = 30.0,
                     kv_bits: Optional[int] = None,
                     num_draft_tokens: Optional[int] = None, lookahead: Optional[int] = None,
                     **drafter_options) -> DsiDecoder:
    """DSI over worker processes: `workers` target copies (spawned here, or the ranks mlx.launch
    started), `drafter` (any chain method) run ahead by `block` tokens per job. `lookahead` is
    the block's earlier name (the DSI paper's; kept for callers, `lookahead` is also a method).
    A worker is declared hung after `job_timeout` seconds without a reply until five replies
    besides each worker's first are seen (the first jobs load the model), then after 50 times
    their mean reply time, at least `min_job_timeout`, at most `job_timeout`
    (Orchestrator.reply_deadline); both are the pool's first decoder's (a later decoder of the
    same pool shares its orchestrator)."""
    from .launch import get_pool

    block = num_draft_tokens or lookahead or block
    if drafter == "dsi":
        raise MlxSpecError("dsi's drafter must be a drafting method such as draft or pld")
    check_draft_size("block", block, error=MlxSpecError)
    drafters.check_name(drafter)
    proposer = drafters.create(drafter, model,
                               **_drafter_options(drafter, block, draft_model, drafter_options))
    pool = get_pool(workers, model.path, kv_bits)
    drafting = ThreadedDrafting(proposer, pool.pool.post)
    if pool.orchestrator is None:
        # one orchestrator per pool: it alone knows which worker computes what and which failed,
        # so every DSI decoder of this process shares it and brings its own drafter
        pool.orchestrator = Orchestrator(pool.pool, proposer, block=block,
                                         job_timeout=job_timeout, on_failure=_tell_user,
                                         drafting=drafting, min_job_timeout=min_job_timeout)
    return DsiDecoder(pool.orchestrator, drafting=drafting, block=block)
