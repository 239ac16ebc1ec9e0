"""The Multiverse engine against Multiverse Attention: same logits, same tokens, budgets."""

import pytest
import torch

from polyverse.backends.transformers import TransformersBackend
from polyverse.config import GenerationConfig
from polyverse.loop import decode
from polyverse.methods.ar import ARProposer
from polyverse.models.tiny import char_tokenizer, tiny_model
from polyverse.multiverse import attention
from polyverse.multiverse.engine import Engine, MultiverseConfig
from polyverse.multiverse.sequence import encode, pieces

EOS = 2
TEXT = (
    "<Parallel>\n<Goal>\n<Outline>\n1: a\n</Outline>\n<Outline>\n2: b\n</Outline>\n</Goal>\n"
    "<Path>\n1: x=1\n</Path>\n"
    "<Path>\n2: y\n<Parallel>\n<Goal>\n<Outline>\n2.1: p\n</Outline>\n<Outline>\n2.2: q\n</Outline>\n</Goal>\n"
    "<Path>\n2.1: pp\n</Path>\n<Path>\n2.2: qqqq\n</Path>\n<Conclusion>\nc\n</Conclusion>\n</Parallel>\nz\n</Path>\n"
    "<Conclusion>\nx+y\n</Conclusion>\n</Parallel>\ndone"
)


@pytest.fixture(scope="module")
def setup():
    tok = char_tokenizer()
    model = tiny_model(seed=1)
    prompt = tok("Q: sum?\n", add_special_tokens=False)["input_ids"]
    ids, labels, _ = encode(pieces(TEXT), tok)
    return tok, model, prompt, prompt + ids, [()] * len(prompt) + labels


def replay(flat, labels):
    """A picker that writes the reference tokens of each branch, then end-of-text on the trunk."""
    per: dict = {}
    for t, lab in zip(flat, labels):
        per.setdefault(lab, []).append(t)

    def pick(br, row):
        seq = per[br.label]
        return seq[len(br.tokens)] if len(br.tokens) < len(seq) else EOS

    return pick


def run(model, tok, prompt, config, pick=None, max_new=400):
    rows = {}
    eng = Engine(TransformersBackend(model), tok, config, GenerationConfig(max_new_tokens=max_new, eos_token_ids=(EOS,)),
                 pick=pick, record=lambda lab, k, row: rows.__setitem__((lab, k), row.clone()))
    updates = list(eng.run(prompt))
    return eng, updates, rows


@pytest.mark.parametrize("parallel", [True, False])
def test_engine_logits_equal_one_pass_with_the_training_mask(setup, parallel):
    tok, model, prompt, flat, labels = setup
    eng, updates, rows = run(model, tok, prompt, MultiverseConfig(parallel=parallel), replay(flat, labels))
    toks, labs = eng.flat()
    assert toks == flat + [EOS] and labs == labels + [()]
    assert updates[-1].finish_reason == "eos"
    pos = attention.positions(labels)
    with torch.no_grad():
        full = model(input_ids=torch.tensor([flat]), attention_mask=attention.additive(labels),
                     position_ids=torch.tensor([pos])).logits[0]  # [n, V]
    index, seen = {}, {}
    for i, lab in enumerate(labels):
        index[(lab, seen.get(lab, 0))] = i
        seen[lab] = seen.get(lab, 0) + 1
    path_rows = [key for key in rows if key[0] != ()]
    # every model-written path token was predicted by one engine row
    _, _, forced = encode(pieces(TEXT), tok)
    written = sum(1 for lab, f in zip(labels[len(prompt):], forced) if lab != () and not f)
    assert len(path_rows) == written
    for key, row in rows.items():
        if key in index:
            assert torch.allclose(row, full[index[key]], atol=1e-4), key


def test_parallel_runs_paths_in_fewer_passes_than_sequential(setup):
    tok, model, prompt, flat, labels = setup
    par, _, rows_par = run(model, tok, prompt, MultiverseConfig(parallel=True), replay(flat, labels))
    seq, _, rows_seq = run(model, tok, prompt, MultiverseConfig(parallel=False), replay(flat, labels))
    assert par.flat() == seq.flat()
    assert par.passes < seq.passes
    assert rows_par.keys() == rows_seq.keys()
    assert all(torch.allclose(rows_par[k], rows_seq[k], atol=1e-4) for k in rows_par)


def test_greedy_parallel_and_sequential_write_the_same_paths(setup):
    """Free greedy decoding inside forked paths: scheduling does not change what is written."""
    tok, model, prompt, flat, labels = setup
    goal = prompt + tok(TEXT[: TEXT.index("</Goal>") + 7], add_special_tokens=False)["input_ids"]

    def pick(br, row):  # the model writes the last ">" of </Goal>, then greedy everywhere
        return goal[-1] if br.kind == "trunk" and len(br.tokens) == len(goal) - 1 else int(torch.argmax(row))

    outs = []
    for parallel in (True, False):
        cfg = MultiverseConfig(parallel=parallel, max_path_tokens=24)
        eng, _, _ = run(model, tok, goal[:-1], cfg, pick, max_new=60)
        outs.append(eng.flat())
        assert len(eng.trunk.forks) == 1 and len(eng.trunk.forks[0][1]) == 2
    assert outs[0] == outs[1]


def test_no_tags_is_plain_greedy(setup):
    tok, model, prompt, _, _ = setup
    eng, updates, _ = run(model, tok, prompt, MultiverseConfig(), max_new=40)
    backend = TransformersBackend(model)
    ar = [t for s in decode(backend, ARProposer(), prompt, GenerationConfig(max_new_tokens=40, eos_token_ids=(EOS,))) for t in s.tokens]
    assert eng.flat()[0][len(prompt):] == ar
    assert all(u.fed == 1 for u in updates) and updates[-1].finish_reason in ("length", "eos")


def test_budgets(setup):
    tok, model, prompt, flat, labels = setup
    pick = replay(flat, labels)
    # a path budget closes path 1 early with a forced </Path>
    eng, _, _ = run(model, tok, prompt, MultiverseConfig(max_path_tokens=24), pick)
    text = tok.decode(eng.flat()[0])
    # both paths cut at 24 characters, the forced "\n</Path>" included; nothing nested opened
    assert "<Path>\n1: x=1\n<\n</Path>\n<Path>\n2: y\n<Pa\n</Path>\n<Conclusion>" in text
    assert [k.pos - eng.trunk.block_start for k in eng.trunk.forks[0][1]] == [24, 24]
    # depth 1: the nested block is not forked, path 2 writes it as plain text
    eng, _, _ = run(model, tok, prompt, MultiverseConfig(max_depth=1), pick)
    assert len(eng.trunk.forks) == 1 and not any(k.forks for k in eng.trunk.forks[0][1])
    # max_paths 1: no fork at all
    eng, _, _ = run(model, tok, prompt, MultiverseConfig(max_paths=1), pick)
    assert not eng.trunk.forks
    # total budget as sequential length
    eng, updates, _ = run(model, tok, prompt, MultiverseConfig(), pick, max_new=50)
    assert updates[-1].finish_reason == "length"
    # the pass that reaches the budget may write a forced seed past it, never a chosen token
    assert 50 <= eng.sequential_length() < 50 + len("\n<Path>\n1:")


def test_guided_mode_forces_a_valid_structure(setup):
    tok, model, prompt, _, _ = setup
    cfg = MultiverseConfig(guided=True, paths=3, max_path_tokens=16, outline_tokens=6)
    eng, updates, _ = run(model, tok, prompt, cfg, max_new=300)
    text = tok.decode(eng.flat()[0][len(prompt):], skip_special_tokens=True)
    assert text.startswith("<Parallel>\n<Goal>\n<Outline>\n1:")
    assert text.count("<Outline>") == 3 and text.count("<Path>") == 3 and text.count("</Path>") == 3
    assert "<Conclusion>" in text
    assert len({w[0] for u in updates for w in u.writes}) == 4  # trunk + 3 paths
