"""The embedded default models: present as package data, loadable by mlx-lm unchanged, and decoded
losslessly by every chain method on a trained (not random) model."""
import re
from pathlib import Path

import pytest
from mlx_lm import load as mlx_lm_load

import mlx_spec
from mlx_spec.loading import DEFAULT_DRAFT, DEFAULT_TARGET, shipped_model, shipped_models_dir
from support.greedy import mlx_lm_greedy

STORY_PROMPT = "Once upon a time, there was a little girl"


@pytest.fixture(scope="module")
def target():
    return mlx_spec.load()


def test_shipped_models_are_mlx_lm_folders():
    for name in (DEFAULT_TARGET, DEFAULT_DRAFT):
        path = shipped_model(name)
        assert path is not None, f"{name} is not shipped in models/"
        model, tokenizer = mlx_lm_load(str(path))
        assert tokenizer.encode("Once upon a time")
    total = sum(f.stat().st_size for f in shipped_models_dir().rglob("*") if f.is_file())
    # the TinyStories models (~64 MB), SmolLM2's head (27 MB) and draft (32 MB)
    assert total < 128 * 2**20


def test_target_size_and_draft_compatibility(target):
    from mlx.utils import tree_flatten

    params = sum(v.size for _, v in tree_flatten(target.model.parameters()))
    assert 25e6 <= params <= 40e6
    draft = mlx_spec.load(DEFAULT_DRAFT)
    draft_params = sum(v.size for _, v in tree_flatten(draft.model.parameters()))
    assert draft_params * 10 <= params
    assert draft.tokenizer.vocab_size == target.tokenizer.vocab_size


@pytest.mark.parametrize("method", ["ar", "pld"])
def test_trained_target_greedy_equals_mlx_lm(target, method):
    expected = mlx_lm_greedy(target, STORY_PROMPT, 80)
    result = mlx_spec.generate(target, STORY_PROMPT, method=method, max_tokens=80)
    assert result.token_ids == expected


def test_story_is_english_text_that_continues_the_prompt(target):
    result = mlx_spec.generate(target, STORY_PROMPT, method="ar", max_tokens=120)
    assert result.text.startswith(" ")  # a continuation keeps its word boundary
    words = re.findall(r"[A-Za-z']+", result.text)
    assert len(words) >= 60
    assert len(re.findall(r"[.!?]", result.text)) >= 3
    common = {"the", "a", "and", "was", "he", "she", "to", "said", "they", "her", "his", "it"}
    assert sum(w.lower() in common for w in words) >= len(words) // 8


SMOLLM2 = Path(__file__).resolve().parents[2].parent / "shared" / "models" / "smollm2-135m-instruct"


@pytest.mark.skipif(not SMOLLM2.exists(), reason="needs ../shared/models/smollm2-135m-instruct")
def test_smollm2_finds_its_shipped_draft_and_head_and_decodes_losslessly():
    import json

    from mlx_lm.utils import dequantize_model

    from mlx_spec import cost

    model = mlx_spec.load(str(SMOLLM2))
    # the folder's 8-bit layers dequantized in memory: mlx's CPU quantized matmul took 0.4 s a
    # token here (38 s for this test); the companions are found by the folder's config alone, and
    # 8-bit exactness is tested on every architecture (tests/core/test_architectures.py)
    dequantize_model(model.model)
    # The fp16 copy's measured cost shape (README) planted in the test cache: measuring the 8-bit
    # folder here took 78 s, and the drafters only need a model under which drafting pays.
    one = 0.065
    planted = cost.CostModel(cost.EXTRA_SIZES,
                             tuple(one * r for r in (1, 0.98, 1.16, 1.30, 1.56, 2.2)),
                             cost.CONTEXT, tuple(one * r for r in (1, 0.98, 1.2, 1.45, 1.9, 2.8)))
    file = cost._cache_file(model)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(planted.to_dict()))
    prompt = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": "List three uses of a paperclip."}],
        add_generation_prompt=True, tokenize=False)
    expected = mlx_lm_greedy(model, prompt, 24)
    for method in ("draft", "redrafter"):
        result = mlx_spec.generate(model, prompt, method=method, max_tokens=24, raw=True)
        assert result.token_ids == expected, method
        assert result.stats.accepted_drafts > 0, method  # the shipped drafter, found and working
