"""dsi's sampled output has exactly the target's distribution: chi-square of 3-token continuations
against the distribution enumerated with plain forwards (tests/support/exactness.py), at temperature 0.7
and 1.0. The orchestrator runs with in-process workers (real Verifier and Target, jobs through the
wire encoding) so that many samples are cheap; with two workers and block 1 the second job's
root is a drafted token checked against the first job's bonus, the path only dsi has. The drafter
is the target with its logits doubled (a sharper copy: most drafts accepted, so jobs pipeline, and
enough rejected that resampling from the residual matters; a drafter unrelated to the target
would see its drafts discarded before use, since the first job's bonus rarely equals its root).
A rule that accepts every draft is caught."""
import queue
import shutil

import mlx.core as mx

import pytest

import mlx_spec
from mlx_spec import drafters
from mlx_spec.dsi import transport
from mlx_spec.dsi.decoder import DsiDecoder
from mlx_spec.dsi.orchestrator import Orchestrator, Result
from mlx_spec.dsi.verifier import Verifier
from mlx_spec.kv import common_prefix
from mlx_spec.sampling import SamplingParams
from mlx_spec.target import Target
from support.exactness import (LENGTH, PROMPT, SAMPLES, TOP_K, biased_accept, chi_square_pvalue,
                               exact_distribution, sample_continuations)


class InProcessPool:
    """Workers with their own target copy and KV cache, computed in the orchestrator's thread:
    a job is verified only when the orchestrator blocks waiting and no drafter event is queued,
    so the drafter always runs ahead (as it does when verification is the slow part)."""

    def __init__(self, model_dir, n):
        self.worker_ids = list(range(1, n + 1))
        self.verifiers = {w: Verifier(Target(mlx_spec.load(str(model_dir)).model))
                          for w in self.worker_ids}
        self.cached = {w: [] for w in self.worker_ids}
        self.events = queue.Queue()
        self.pending = []

    def submit(self, worker, job, sampling):
        self.pending.append((worker, job, sampling))

    def _verify(self, worker, job, sampling):
        keep = common_prefix(self.cached[worker], job.context)
        tail = job.context[keep:] + job.chain
        wire = transport.decode_job(transport.encode_job(job, keep, tail, sampling, epoch=0))
        tokens, accepted = self.verifiers[worker].run(wire["keep"], wire["tail"], wire["n_chain"],
                                                      wire["sampling"], wire["seed"], wire["probs"])
        self.cached[worker] = job.context + job.chain
        return Result(worker, job.id, tokens, accepted)

    def wait(self, timeout):
        if not self.events.empty():
            return self.events.get_nowait()
        if timeout == 0 or not self.pending:  # (timeout 0: the orchestrator is only draining)
            return None
        return self._verify(*self.pending.pop(0))

    def abandon(self, worker):
        raise AssertionError("no worker fails here")

    def post(self, event):
        self.events.put(event)


@pytest.fixture(scope="module")
def target_dir(random_model_dirs):
    return random_model_dirs["llama"]


@pytest.fixture(scope="module")
def sharp_dir(target_dir, tmp_path_factory):
    """The target with its final norm doubled: its logits are twice the target's (q is p at half
    the temperature)."""
    sharp = tmp_path_factory.mktemp("dsi_sharp") / "sharp"
    shutil.copytree(target_dir, sharp)
    weights = mx.load(str(sharp / "model.safetensors"))
    weights["model.norm.weight"] = weights["model.norm.weight"] * 2
    mx.save_safetensors(str(sharp / "model.safetensors"), weights)
    return sharp


def dsi_decoder(target_dir, drafter_dir, workers=2, block=1):
    model = mlx_spec.load(str(target_dir))
    drafter = drafters.create("draft", model, draft_model=str(drafter_dir),
                              num_draft_tokens=block, adaptive=False)  # as DSI makes it
    orchestrator = Orchestrator(InProcessPool(target_dir, workers), drafter, block=block)
    return DsiDecoder(orchestrator), orchestrator


def sampled_pvalue(random_models, decoder, temperature):
    params = SamplingParams(temperature=temperature, top_k=TOP_K)
    exact = exact_distribution(random_models["llama"].model, PROMPT, LENGTH, params)
    counts = sample_continuations(decoder, PROMPT, LENGTH, params, SAMPLES)
    return chi_square_pvalue(counts, exact)


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_dsi_sampled_output_has_target_distribution(random_models, target_dir, sharp_dir,
                                                     temperature):
    decoder, orchestrator = dsi_decoder(target_dir, sharp_dir)
    assert sampled_pvalue(random_models, decoder, temperature) > 1e-4
    # drafts were really used, and some were rejected
    assert orchestrator.accepted_total > SAMPLES // 2 and orchestrator.rejections_total > 50


def test_dsi_biased_acceptance_is_caught(random_models, target_dir, sharp_dir, monkeypatch):
    monkeypatch.setattr("mlx_spec.dsi.verifier.accept", biased_accept)
    decoder, _ = dsi_decoder(target_dir, sharp_dir)
    assert sampled_pvalue(random_models, decoder, 1.0) < 1e-6
