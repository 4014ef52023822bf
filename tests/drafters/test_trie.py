"""The n-gram trie: counts equal brute-force n-gram counts, streaming equals batch insertion, decay,
pruning, files, and retrieval that matches a brute-force search of continuations."""
import random

import pytest

from mlx_spec.tree import Tree
from mlx_spec.drafters.trie import ROOT, NgramTrie, TrieStream, is_saved_trie, retrieve


def occurrences(seq, gram):
    n = len(gram)
    return sum(1 for i in range(len(seq) - n + 1) if tuple(seq[i:i + n]) == tuple(gram))


def all_paths(trie):
    """Every stored n-gram with its count."""
    out = {}
    stack = [((), ROOT)]
    while stack:
        prefix, node = stack.pop()
        for token, child in trie.children(node).items():
            out[prefix + (token,)] = trie.freq[child] / trie.weight
            stack.append((prefix + (token,), child))
    return out


def random_seq(rng, n, vocab):
    return [rng.randrange(vocab) for _ in range(n)]


def test_insert_counts_equal_brute_force_ngram_counts():
    rng = random.Random(0)
    seq = random_seq(rng, 300, 6)
    trie = NgramTrie()
    trie.insert(seq, window=4)
    paths = all_paths(trie)
    assert trie.size == len(paths)
    expected = {tuple(seq[i:i + n]) for i in range(len(seq)) for n in range(1, 5) if i + n <= len(seq)}
    assert set(paths) == expected
    for gram, count in paths.items():
        assert count == occurrences(seq, gram)
    assert trie.count([9, 9]) == 0 and trie.find([9]) is None


def test_small_example_by_hand():
    trie = NgramTrie()
    trie.insert([1, 2, 3, 1, 2], window=3)
    assert trie.count([1, 2]) == 2
    assert trie.count([1, 2, 3]) == 1
    assert trie.count([2, 3, 1]) == 1
    assert trie.count([3, 1, 2]) == 1
    assert trie.count([2, 3, 1, 2]) == 0  # longer than the window
    assert set(all_paths(trie)) == {(1,), (1, 2), (1, 2, 3), (2,), (2, 3), (2, 3, 1), (3,), (3, 1),
                                    (3, 1, 2)}
    assert trie.size == 9


def test_streaming_in_chunks_equals_inserting_the_whole_sequence():
    rng = random.Random(1)
    seq = random_seq(rng, 200, 5)
    whole = NgramTrie()
    whole.insert(seq, window=5)
    streamed = NgramTrie()
    stream = TrieStream(streamed, window=5)
    i = 0
    while i < len(seq):
        step = rng.randint(1, 7)
        stream.extend(seq[i:i + step])
        i += step
        # at every moment the counts are those of the prefix seen so far
        for gram, count in list(all_paths(streamed).items())[:30]:
            assert count == occurrences(seq[:i], gram)
    assert all_paths(streamed) == all_paths(whole)
    assert streamed.size == whole.size


def test_a_stream_pruned_between_its_chunks_counts_as_walking_each_window_from_the_root():
    """TrieStream keeps each growing window's last node; a prune frees node numbers for new
    nodes, and the stream finds its windows again (making pruned ones uncounted, as a walk from
    the root does)."""
    rng = random.Random(6)
    seq = random_seq(rng, 400, 6)
    streamed, walked = NgramTrie(), NgramTrie()
    stream = TrieStream(streamed, window=5)
    seen = 0
    while seen < len(seq):
        chunk = seq[seen:seen + rng.randint(1, 7)]
        stream.extend(chunk)
        for start in range(max(0, seen - 4), seen + len(chunk)):  # each window from the root
            walked.add_path(seq[start:min(start + 5, seen + len(chunk))],
                            done=max(0, seen - start), tick=start)
        seen += len(chunk)
        walked.tick = seen
        if rng.random() < 0.3:
            for trie in (streamed, walked):
                trie.prune(trie.size * 2 // 3)
        assert all_paths(streamed) == all_paths(walked) and streamed.size == walked.size
    assert streamed.pruned > 10


def test_nodes_are_no_objects_for_the_cycle_collector():
    """A node and its children's dict as Python objects were traversed by every collection (a
    streamed token cost 36 us with the collector on, 12 off). Nodes are slots of a few lists and
    int-only dicts: no new object for the collector however many nodes are made."""
    import gc
    trie = NgramTrie()
    stream = TrieStream(trie, window=6)
    stream.extend(random_seq(random.Random(7), 50, 40))
    gc.collect()
    before = len(gc.get_objects())
    stream.extend(random_seq(random.Random(8), 2000, 40))
    assert trie.size > 5000
    assert len(gc.get_objects()) - before < 50


def test_inserting_in_slices_equals_inserting_at_once():
    seq = random_seq(random.Random(5), 120, 4)
    whole, sliced = NgramTrie(), NgramTrie()
    whole.insert(seq, window=5)
    for first in range(0, len(seq), 17):
        sliced.insert(seq, window=5, first=first, stop=first + 17)
    assert all_paths(sliced) == all_paths(whole) and sliced.tick == whole.tick == len(seq)


def test_decay_scales_counts_and_keeps_parents_at_least_children():
    trie = NgramTrie()
    trie.insert([1, 2, 3, 1, 2, 4], window=3)
    trie.decay(0.5)
    assert trie.count([1, 2]) == pytest.approx(1.0)
    trie.insert([1, 2, 5], window=3)  # new occurrences weigh 1 against the decayed 0.5s
    assert trie.count([1, 2]) == pytest.approx(2.0)
    assert trie.count([1, 2, 5]) == pytest.approx(1.0)
    assert trie.count([1, 2, 3]) == pytest.approx(0.5)
    for _ in range(200):  # forces renormalisation of the lazy weight
        trie.decay(0.5)
    assert trie.weight < 1e12
    assert trie.count([1, 2, 5]) == pytest.approx(0.5 ** 200, rel=1e-6)
    with pytest.raises(ValueError):
        trie.decay(0.0)


def check_prefix_closed_and_monotone(trie):
    count = 0
    stack = [ROOT]
    while stack:
        node = stack.pop()
        for child in trie.children(node).values():
            count += 1
            if node != ROOT:
                assert (trie.freq[child], trie.last[child]) <= (trie.freq[node], trie.last[node])
            stack.append(child)
    assert count == trie.size


def test_prune_keeps_the_most_frequent_within_budget():
    rng = random.Random(2)
    trie = NgramTrie()
    common = [7, 8, 9, 7, 8, 9]
    for _ in range(30):
        trie.insert(common, window=4)
        trie.insert(random_seq(rng, 20, 50), window=4)
    before = all_paths(trie)
    trie.prune(40)
    after = all_paths(trie)
    assert 0 < trie.size <= 40
    check_prefix_closed_and_monotone(trie)
    assert trie.count([7, 8, 9, 7]) == before[(7, 8, 9, 7)]
    dropped = set(before) - set(after)
    assert dropped and min(after.values()) >= max(before[g] for g in dropped)


def test_save_and_load_round_trip(tmp_path):
    rng = random.Random(3)
    trie = NgramTrie()
    trie.insert(random_seq(rng, 120, 8), window=4)
    trie.decay(0.5)
    path = tmp_path / "trie.bin"
    trie.save(path)
    assert is_saved_trie(path)
    loaded = NgramTrie.load(path)
    assert loaded.size == trie.size and loaded.tick == trie.tick
    assert all_paths(loaded) == pytest.approx(all_paths(trie))
    check_prefix_closed_and_monotone(loaded)
    text = tmp_path / "answers.txt"
    text.write_text("not a trie")
    assert not is_saved_trie(text)
    with pytest.raises(ValueError):
        NgramTrie.load(text)


def test_absorb_adds_counts():
    a, b = NgramTrie(), NgramTrie()
    a.insert([1, 2, 3], window=3)
    b.insert([1, 2, 4, 1, 2], window=3)
    b.decay(0.5)
    a.absorb(b)
    assert a.count([1, 2]) == pytest.approx(1 + 1.0)
    assert a.count([1, 2, 4]) == pytest.approx(0.5)
    assert a.size == len(all_paths(a))
    check_prefix_closed_and_monotone(a)


# -- retrieval ------------------------------------------------------------------------------------

def retrieved_paths(found):
    """Each retrieved node as the token path from the root (root excluded)."""
    paths = []
    for i in range(1, len(found)):
        path, node = [], i
        while node > 0:
            path.append(found.tokens[node])
            node = found.parents[node]
        paths.append(tuple(reversed(path)))
    return paths


def brute_force_candidates(seq, suffix, depth, window):
    """Every continuation (1..depth tokens) that followed `suffix` in seq, with its count."""
    out = {}
    k = len(suffix)
    for n in range(1, min(depth, window - k) + 1):
        for i in range(len(seq) - k - n + 1):
            if tuple(seq[i:i + k]) == tuple(suffix):
                cont = tuple(seq[i + k:i + k + n])
                out[cont] = out.get(cont, 0) + 1
    return out


@pytest.mark.parametrize("seed", range(5))
def test_unlimited_multi_branch_retrieval_equals_brute_force(seed):
    rng = random.Random(seed)
    seq = random_seq(rng, 150, 5)
    trie = NgramTrie()
    trie.insert(seq, window=6)
    context = random_seq(rng, 2, 5)
    found = retrieve([trie], context, budget=10_000, depth=4, max_match=2)
    expected = set(brute_force_candidates(seq, context[-2:], 4, 6))
    expected |= set(brute_force_candidates(seq, context[-1:], 4, 6))
    paths = retrieved_paths(found)
    assert len(paths) == len(set(paths))  # one node per distinct prefix
    assert set(paths) == expected


@pytest.mark.parametrize("seed", range(5))
def test_budgeted_retrieval_takes_the_most_frequent_continuations(seed):
    rng = random.Random(10 + seed)
    seq = random_seq(rng, 400, 4)
    trie = NgramTrie()
    trie.insert(seq, window=7)
    context = seq[-2:]
    candidates = brute_force_candidates(seq[:-1], context, 5, 7)  # the last position adds none
    budget = 12
    assert len(candidates) > budget
    found = retrieve([trie], context, budget=budget, depth=5, max_match=2)
    chosen = retrieved_paths(found)
    assert len(chosen) == budget
    worst_chosen = min(candidates[p] for p in chosen)
    best_left = max(c for p, c in candidates.items() if p not in chosen)
    assert worst_chosen >= best_left
    # any prefix of the selection order is a tree: parents come first
    assert all(p < i for i, p in enumerate(found.parents) if i > 0)


def test_single_mode_follows_the_most_frequent_child():
    trie = NgramTrie()
    trie.insert([5, 1, 2, 5, 1, 2, 5, 1, 3, 5, 4], window=5)
    found = retrieve([trie], [0, 5], budget=8, depth=3, max_match=2, mode="single")
    assert found.tokens[1:] == [1, 2, 5]
    assert found.parents == [-1, 0, 1, 2]


def test_falls_back_to_a_shorter_match():
    trie = NgramTrie()
    trie.insert([1, 2, 3, 4], window=4)
    found = retrieve([trie], [9, 2], budget=8, depth=3, max_match=2)  # (9, 2) never seen
    assert retrieved_paths(found) == [(3,), (3, 4)]
    assert len(retrieve([trie], [9, 8], budget=8, depth=3)) == 1  # nothing: just the root


def test_prompt_trie_ranks_first_and_shorter_matches_fill_the_budget():
    prompt, output = NgramTrie(), NgramTrie()
    prompt.insert([1, 2, 7], window=4)
    for _ in range(5):
        output.insert([1, 2, 8], window=4)
    output.insert([6, 2, 9], window=4)
    found = retrieve([prompt, output], [1, 2], budget=3, depth=2, max_match=2)
    assert retrieved_paths(found) == [(7,), (8,), (9,)]  # 2-gram matches first, then "2" alone


def test_merged_tree_has_one_node_per_distinct_prefix():
    rng = random.Random(4)
    seq = random_seq(rng, 300, 3)
    trie = NgramTrie()
    trie.insert(seq, window=6)
    found = retrieve([trie], seq[-2:], budget=40, depth=4)
    tree = Tree(tokens=found.tokens, parents=found.parents)
    paths = [tuple(tree.tokens[n] for n in tree.path_to(i)) for i in range(len(tree))]
    assert len(set(paths)) == len(tree)
    leaves = [retrieved_paths(found)[i - 1] for i in tree.leaves()]
    assert len(Tree.from_branches(found.tokens[0], leaves)) == len(tree)


def test_ranking_over_three_tries_equals_two_and_an_empty_one():
    """Ranking is written out for one and two tries and generic beyond: the generic one gives
    what the two-trie one gives where the third trie adds nothing."""
    rng = random.Random(9)
    prompt, output = NgramTrie(), NgramTrie()
    prompt.insert(random_seq(rng, 80, 5), window=5)
    output.insert(random_seq(rng, 300, 5), window=5)
    for seed in range(20):
        context = random_seq(random.Random(seed), 2, 5)
        two = retrieve([prompt, output], context, budget=16, depth=4)
        three = retrieve([prompt, output, NgramTrie()], context, budget=16, depth=4)
        assert (two.tokens, two.parents) == (three.tokens, three.parents)


def test_a_warm_start_ranks_tied_siblings_as_the_trie_it_was_saved_from(tmp_path):
    """Siblings tied on count and tick are ranked by their order; a warm start (save, load,
    absorb) gives them back in the order of the trie saved, as the object trie's did."""
    saved = NgramTrie()
    first, second = TrieStream(saved, window=3), TrieStream(saved, window=3)  # (same tick)
    first.extend([1, 2])
    second.extend([1, 3])
    assert retrieve([saved], [1], budget=1, depth=1).tokens == [1, 2]
    saved.save(tmp_path / "trie.npz")
    warm = NgramTrie()
    warm.absorb(NgramTrie.load(tmp_path / "trie.npz"))
    assert retrieve([warm], [1], budget=1, depth=1).tokens == [1, 2]


def test_two_tries_merge_children_as_any_number_of_tries_do():
    """_Ranked.children is written out for two tries (lookahead's): on random tries it gives
    every token under either trie's node with both nodes (None where one lacks it), as the
    general form does for three."""
    from mlx_spec.drafters.trie import _Ranked
    rng = random.Random(3)
    tries = [NgramTrie(), NgramTrie(), NgramTrie()]
    for trie in tries:
        trie.insert([rng.randrange(6) for _ in range(300)], window=4)
    pair, triple = _Ranked(tries[:2]), _Ranked(tries[:2] + [NgramTrie()])
    seen = 0
    for context in ([], [1], [2, 3], [4, 4], [5, 0, 1]):
        nodes = tuple(trie.find(context) for trie in tries[:2])
        got = pair.children(nodes)
        general = triple.children(nodes + (None,))  # (in the same order: it breaks ties)
        assert list(got.items()) == [(t, found[:2]) for t, found in general.items()]
        for token, (a, b) in got.items():
            assert a == (tries[0].kids[nodes[0]] or {}).get(token) if nodes[0] is not None else a is None
            assert b == (tries[1].kids[nodes[1]] or {}).get(token) if nodes[1] is not None else b is None
        seen += len(got)
    assert seen > 10
    assert pair.children((None, None)) == {}
