"""Long use in one process: the lookahead output trie, shared by every request on a loaded model,
stays within its node budget over many requests (and its size bookkeeping is honest), while the
output stays lossless."""
import mlx_spec
from mlx_spec.drafters.lookahead import PRUNE_TO, Lookahead
from mlx_spec.drafters.shared import shared
from mlx_spec.drafters.trie import ROOT
from support.random_models import CORPUS

BUDGET = 60
WORDS = CORPUS.split()[:80]


def node_count(trie) -> int:
    count, stack = 0, [ROOT]
    while stack:
        children = trie.children(stack.pop())
        count += len(children)
        stack.extend(children.values())
    return count


def test_lookahead_trie_respects_its_node_budget_over_many_requests(random_model_dirs, monkeypatch):
    model = mlx_spec.load(str(random_model_dirs["llama"]))  # fresh extras: an empty shared trie
    after_propose = []
    propose = Lookahead.propose

    def recording(self, ctx):
        tree = propose(self, ctx)
        after_propose.append(self.output_trie.size)
        return tree

    monkeypatch.setattr(Lookahead, "propose", recording)
    after_request = []
    for i in range(30):
        prompt = " ".join(WORDS[i:i + 6 + i % 5])
        result = mlx_spec.generate(model, prompt, method="lookahead", node_budget=BUDGET,
                                   max_tokens=40, raw=True)
        if i % 10 == 0:  # pruning never changes what is generated
            assert result.token_ids == mlx_spec.generate(model, prompt, method="ar", max_tokens=40,
                                                         raw=True).token_ids
        trie = shared(model).output_trie
        assert trie.size == node_count(trie)
        after_request.append(trie.size)
    assert max(after_propose) <= BUDGET
    assert max(after_request) <= BUDGET
    # the budget was binding: far more was generated than it holds, the trie filled up to it and
    # was pruned (its size fell) along the way
    assert len(after_propose) > 5 * BUDGET and max(after_propose) > PRUNE_TO * BUDGET
    assert any(b < a for a, b in zip(after_propose, after_propose[1:]))
