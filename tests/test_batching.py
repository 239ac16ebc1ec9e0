"""Many requests in one pass: every request's output is what it gets alone, whatever joins, leaves
or shares its passes; the row budget; the prompt cells shared between sessions; offline batches."""

import doctest
import gc
import weakref
from functools import lru_cache

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import polyverse
from polyverse.backends.base import forward_many
from polyverse.backends.cpu import lean, prefix
from polyverse.backends.transformers import TransformersBackend
from polyverse.batching import Batch, BatchConfig, allocate, budget
from polyverse.batching.budget import Acceptance, level_widths
from polyverse.costs import CostCurve
from polyverse.draft import Draft
from polyverse.layout import chain_feed, draft_feed
from polyverse.models.tiny import save_tiny, tiny_model

LEAN = lean.extension() is not None and lean.isa(env=None) is not None
needs_lean = pytest.mark.skipif(not LEAN, reason="the lean pass does not build or run here")

FLAT = CostCurve((1, 16, 32), (1.0, 1.0, 1.0))
LINEAR = CostCurve((1, 32), (1.0, 32.0))
# shaped like the bundled model's lean bf16 pass: flat to a dozen rows, then about linear
LEANISH = CostCurve((1, 4, 8, 12, 16, 24, 32, 64), (10.4, 11.5, 12.8, 14.9, 20.2, 25.6, 34.2, 59.4))


def test_module_examples():
    from polyverse.batching import engine

    for module in (budget, prefix, engine):
        assert doctest.testmod(module).failed == 0, module.__name__


# ---- the row budget ------------------------------------------------------------------------------

def test_allocate_keeps_free_rows_and_drops_costly_ones():
    chains = [Draft.chain([1, 2, 3, 4]), Draft.chain([5, 6, 7, 8])]
    assert allocate(chains, [0.9, 0.1], 2, FLAT) == [4, 4]
    assert allocate(chains, [0.9, 0.1], 2, LINEAR) == [0, 0]
    assert allocate(chains, [0.9, 0.1], 2, FLAT, max_rows=5) == [3, 0]  # the likelier draft gets the rows


def test_drafts_shrink_as_requests_join():
    """The same drafts get fewer rows each as more requests share the pass, down to none."""
    kept = []
    for n in (1, 4, 16, 32):
        depths = allocate([Draft.chain(list(range(8)))] * n, [0.6] * n, n, LEANISH)
        kept.append(sum(depths) / n)
    assert kept[0] > 0 and kept == sorted(kept, reverse=True) and kept[-1] == 0


@settings(max_examples=60, deadline=None)
@given(alphas=st.lists(st.floats(0, 1), min_size=1, max_size=6), lengths=st.lists(st.integers(0, 8), min_size=6, max_size=6),
       base=st.integers(0, 20), cap=st.one_of(st.none(), st.integers(0, 30)))
def test_allocate_is_no_worse_than_drafting_nothing_or_everything(alphas, lengths, base, cap):
    drafts = [Draft.chain(list(range(k))) for k in lengths[: len(alphas)]]
    rows0 = base + len(drafts)

    def rate(depths):
        tokens = len(drafts) + sum(sum(a ** d for d in range(1, k + 1)) for a, k in zip(alphas, depths))
        return tokens / LEANISH(max(rows0 + sum(depths), 1))

    got = allocate(drafts, alphas, rows0, LEANISH, max_rows=None if cap is None else rows0 + cap)
    assert all(0 <= d <= len(x) for d, x in zip(got, drafts))
    if cap is not None:
        assert sum(got) <= cap
    assert rate(got) >= rate([0] * len(drafts)) - 1e-12
    if cap is None:
        assert rate(got) >= rate([len(x) for x in drafts]) - 1e-12


def test_level_widths_and_acceptance():
    assert level_widths(Draft.tree([[1, 2], [1, 3], [4]])) == [2, 2]
    a = Acceptance()
    assert a.alpha == 0.5
    a.update(4, 4)
    assert a.alpha > 0.8
    for _ in range(3):
        a.update(0, 4)
    low = a.alpha
    assert low < 0.6
    a.update(3, 0)  # no draft: nothing learned
    assert a.alpha == low


# ---- one pass over several sessions ----------------------------------------------------------------

@needs_lean
@pytest.mark.parametrize("dtype", lean.DTYPES)
def test_each_request_of_a_shared_pass_gets_the_logits_of_its_own_pass(dtype):
    m = tiny_model(seed=4, vocab_size=100)
    be = TransformersBackend(m, dtype=dtype, lean=True)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 100, (n,), generator=g).tolist() for n in (5, 17, 1)]
    drafts = [Draft.chain([4, 5, 6]), Draft.tree([[7, 8], [9]]), Draft.empty()]

    def setup():
        sessions = [be.session() for _ in prompts]
        for s, p in zip(sessions, prompts):
            if len(p) > 1:
                s.forward(chain_feed(p[:-1], 0), logits_for=[])
                s.commit(range(len(p) - 1))
        return sessions

    feeds = [draft_feed(p[-1], len(p) - 1, d) for p, d in zip(prompts, drafts)]
    alone = [s.forward(f).full() for s, f in zip(setup(), feeds)]
    sessions = setup()
    together = forward_many([(s, f, None) for s, f in zip(sessions, feeds)])
    for a, t in zip(alone, together):
        assert torch.equal(a, t.full())
        assert t.tops  # the rows the shared pass projected come with their argmax, found in one call
        assert all(t.top(r) == int(a[r].argmax()) for r in range(len(a)))
    # the pass's cells are pending in each session, as after forward
    sessions[0].commit([0, 1])
    assert sessions[0].length == len(prompts[0]) + 1


def test_backends_without_a_shared_pass_run_one_pass_per_part():
    m = tiny_model(seed=2)
    sessions = [TransformersBackend(m, lean=False) for _ in range(2)]
    feeds = [chain_feed([3, 4, 5], 0), chain_feed([6], 0)]
    out = forward_many([(s, f, [len(f) - 1]) for s, f in zip(sessions, feeds)])
    ref = [TransformersBackend(m, lean=False).forward(f, [len(f) - 1]).full() for f in feeds]
    assert all(torch.allclose(o.full(), r) for o, r in zip(out, ref))


# ---- prompt cells shared between sessions --------------------------------------------------------------

@needs_lean
def test_a_restored_prefix_holds_the_bits_a_prefill_computes():
    m = tiny_model(seed=5, vocab_size=100)
    be = TransformersBackend(m, dtype="bf16", lean=True)
    first = list(range(10, 40))
    a = be.session()
    a.forward(chain_feed(first, 0), logits_for=[])
    a.commit(range(len(first)))
    a.store_prefix(first)
    second = first[:20] + [7, 8, 9]
    b = be.session()
    assert b.restore_prefix(second) == 20 and b.length == 20
    fresh = be.session()
    fresh.forward(chain_feed(second[:20], 0), logits_for=[])
    fresh.commit(range(20))
    assert torch.equal(b.cache.keys(20), fresh.cache.keys(20))
    assert torch.equal(b.cache.v[:, :, :20], fresh.cache.v[:, :, :20])
    tail = chain_feed(second[20:], 20)
    assert torch.equal(b.forward(tail).full(), fresh.forward(tail).full())
    assert be.session().restore_prefix([1, 2, 3]) == 0  # nothing shared: nothing restored


def test_the_prefix_store_is_bounded_and_keeps_the_recent_ones():
    class Cells:  # a stand-in for LeanCache: n cells, each its value
        def __init__(self, n):
            self.cells, self.length = list(range(n)), n

        def head(self, n):
            return self.cells[:n]

        def load_head(self, cells, n):
            self.cells, self.length = cells[:n], n

    store = prefix.PrefixStore(entries=2, max_tokens=12, least=3)
    for start in (100, 200, 300):
        store.put(list(range(start, start + 20)), Cells(20))
    assert len(store) == 2
    target = Cells(0)
    assert store.restore(list(range(100, 120)), target) == 0  # the oldest went first
    assert store.restore(list(range(300, 305)) + [1], target) == 5 and target.cells == [0, 1, 2, 3, 4]
    assert store.restore(list(range(200, 230)), target) == 12  # entries are cut to max_tokens
    assert store.restore([300, 301, 5], target) == 0  # fewer than `least` shared


# ---- whole requests in a batch ------------------------------------------------------------------------

@lru_cache(maxsize=None)
def tiny_models(tmp):
    path = save_tiny(tmp / "model", seed=3)
    out = {"transformers": polyverse.load(str(path), progress=False)}
    if LEAN:
        out["lean"] = polyverse.load(str(path), progress=False, dtype="fp32")
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("batching"))


METHODS = [("ar", {}), ("auto", {}), ("jacobi", {"block": 4}), ("lookahead", {"window": 3, "ngram": 3, "guesses": 2}),
           ("prompt_lookup", {}), ("space", {"k": 2, "mask_id": 7})]
TEXT = "abcab cabca bbcca abcab "


def piece(start, length):
    """A prompt cut from the text (never blank)."""
    return (TEXT * 3)[start: start + length].strip() or "a"


def run_batch(model, jobs, config):
    """jobs: (round it joins at, prompt, method, options, max tokens, temperature, seed) -> token ids per job."""
    engine = Batch(model.pass_costs() if config.budget else None, config)
    requests, rnd, done = {}, 0, {}
    while len(done) < len(jobs):
        for i, (at, prompt, method, options, n, temp, seed) in enumerate(jobs):
            if at == rnd and i not in requests:
                requests[i] = model.request(prompt, method=method, options=options, max_new_tokens=n, chat=False,
                                            temperature=temp, seed=seed)
                requests[i].join(engine, i)
        events, _ = engine.round()
        for ev in events:
            assert ev.error is None, ev.error
            if requests[ev.key].push(ev.step):
                done[ev.key] = requests[ev.key].result().token_ids
        rnd += 1
        assert rnd < 2000
    return [done[i] for i in range(len(jobs))]


JOBS = st.lists(st.tuples(st.integers(0, 6), st.integers(1, 40), st.integers(0, len(TEXT) - 1),
                          st.sampled_from(METHODS), st.integers(1, 24)), min_size=1, max_size=5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(jobs=JOBS, kind=st.sampled_from(["lean", "transformers"]), chunk=st.sampled_from([0, 3, 64]),
       budget_on=st.booleans())
def test_greedy_requests_get_what_they_get_alone(models, jobs, kind, chunk, budget_on):
    if kind not in models:
        pytest.skip("no lean pass here")
    model = models[kind]
    spec = [(at, piece(start, length), method, options, n, 0.0, None)
            for at, length, start, (method, options), n in jobs]
    alone = [model.generate(p, method=mt, options=o, max_new_tokens=n, chat=False).token_ids
             for _, p, mt, o, n, _, _ in spec]
    together = run_batch(model, spec, BatchConfig(prefill_chunk=chunk, budget=budget_on, max_rows=8))
    assert together == alone


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(jobs=JOBS, seed=st.integers(0, 1000))
def test_seeded_sampling_is_the_same_whatever_the_batch_mates(models, jobs, seed):
    model = models["lean" if "lean" in models else "transformers"]
    spec = [(at, piece(start, length), method, options, n, 0.9, seed + i)
            for i, (at, length, start, (method, options), n) in enumerate(jobs)]
    alone = [model.generate(p, method=mt, options=o, max_new_tokens=n, chat=False, temperature=t, seed=s).token_ids
             for _, p, mt, o, n, t, s in spec]
    mates = [(0, TEXT, "auto", {}, 30, 0.0, None), (2, TEXT[3:], "ar", {}, 10, 0.0, None)]
    together = run_batch(model, spec + mates, BatchConfig(prefill_chunk=5))
    assert together[: len(spec)] == alone


def test_a_cancelled_request_leaves_at_once_and_frees_its_cache(models):
    model = models["lean" if "lean" in models else "transformers"]
    engine = Batch(None)
    a = model.request(TEXT, method="ar", max_new_tokens=50, chat=False)
    b = model.request(TEXT[2:], method="auto", max_new_tokens=50, chat=False)
    a.join(engine, "a")
    b.join(engine, "b")
    for _ in range(3):
        for ev in engine.round()[0]:
            {"a": a, "b": b}[ev.key].push(ev.step)
    cache = weakref.ref(a.decoding.backend.cache)
    engine.remove("a")
    a = None
    gc.collect()
    assert "a" not in engine and len(engine) == 1 and cache() is None
    events, stats = engine.round()
    assert [ev.key for ev in events] == ["b"] and stats.requests == 1


def test_runner_methods_take_their_own_passes_beside_shared_ones(models):
    from polyverse import registry
    from test_runner import PairsConfig, PairsRunner  # a Runner that schedules its own passes

    registry.register("pairs-batch", PairsConfig, PairsRunner, "", runner=True)
    try:
        model = models["transformers"]
        alone = model.generate(TEXT, method="ar", max_new_tokens=9, chat=False).token_ids
        spec = [(0, TEXT, "pairs-batch", {}, 9, 0.0, None), (1, TEXT[4:], "auto", {}, 12, 0.0, None)]
        got = run_batch(model, spec, BatchConfig())
        assert got[0] == alone
        assert got[1] == model.generate(TEXT[4:], method="auto", max_new_tokens=12, chat=False).token_ids
    finally:
        registry._methods.pop("pairs-batch")


def test_generate_batch_keeps_order_and_equals_generate(models):
    model = models["lean" if "lean" in models else "transformers"]
    prompts = [TEXT[i: i + 9] for i in range(7)]
    got = model.generate_batch(prompts, method="auto", max_new_tokens=15, chat=False, concurrency=3)
    assert [g.token_ids for g in got] == [model.generate(p, method="auto", max_new_tokens=15, chat=False).token_ids
                                          for p in prompts]
    with pytest.raises(polyverse.errors.ConfigError, match="empty"):
        model.generate_batch(["abc", " "], chat=False)
    too_long = "ab" * model.max_length  # text, after the first round: checked before anything is decoded
    made = []
    with pytest.raises(polyverse.errors.ConfigError, match="context"):
        for i, _ in model.generate_many(["abc", "cab", too_long], chat=False, concurrency=2, max_new_tokens=4):
            made.append(i)
    assert made == []
    with pytest.raises(polyverse.errors.ConfigError, match="concurrency"):
        list(model.generate_many(["abc"], concurrency=0))


@needs_lean
def test_requests_starting_together_copy_their_shared_prefix(models, monkeypatch):
    """The leading tokens the first prompts share are prefilled once before the batch starts: every
    request of the first round copies them (none would otherwise: their prompts are still being
    read when the others start), and the answers stay those of one at a time."""
    model = models["lean"]
    shared = "abcab cabca bbcca "
    prompts = [shared + tail for tail in ("ab", "ca", "bb", "cab")]
    restored = []
    made = polyverse.api.Model.request

    def request(self, prompt, **kwargs):
        r = made(self, prompt, **kwargs)
        restored.append(r.decoding.prefilled)
        return r

    monkeypatch.setattr(polyverse.api.Model, "request", request)
    got = model.generate_batch(prompts, method="ar", max_new_tokens=6, chat=False, concurrency=4)
    n = len(model.encode(shared, chat=False))
    assert len(restored) == 4 and all(k >= n - 1 for k in restored)
    monkeypatch.undo()
    assert [g.token_ids for g in got] == [model.generate(p, max_new_tokens=6, chat=False).token_ids for p in prompts]


def test_drafts_cut_by_the_budget_still_teach_their_acceptance(models):
    """A draft cut to nothing is judged against the output it would have predicted, so a request
    with good drafts keeps a high estimate (and drafts again when rows come back), one with bad
    drafts a low one."""
    from polyverse import registry
    from polyverse.loop import Proposer
    from polyverse.options import method_options

    model = models["lean" if "lean" in models else "transformers"]
    text = "abc abc"
    ids = model.encode(text, chat=False)
    greedy = list(ids) + list(model.generate(text, method="ar", max_new_tokens=30, chat=False).token_ids)

    class Oracle(Proposer):  # drafts the greedy continuation itself, or a wrong one
        def __init__(self, right):
            self.right = right

        def propose(self, context):
            nxt = greedy[len(context): len(context) + 4]
            return Draft.chain(nxt if self.right else [(t + 1) % 50 for t in nxt])

    @method_options("oracle-test")
    class OracleConfig:
        right: bool = True

    registry.register("oracle-test", OracleConfig, lambda cfg, ctx: Oracle(cfg.right), "")
    try:
        engine = Batch(LINEAR)  # a row costs a whole pass: every draft is cut when two requests share one
        for key, right in (("good", True), ("bad", False)):
            model.request(text, method="oracle-test", options={"right": right}, max_new_tokens=30,
                          chat=False).join(engine, key)
        drafted = 0
        for _ in range(12):
            events, stats = engine.round()
            if stats.requests == 2 and not stats.prompt_rows:
                drafted += stats.drafted
        assert drafted == 0
        assert engine._shared["good"].acceptance.alpha > 0.8
        assert engine._shared["bad"].acceptance.alpha < 0.2
    finally:
        registry._methods.pop("oracle-test")


def test_a_draft_that_gains_less_than_the_margin_is_not_drafted():
    from polyverse.batching.budget import allocate
    from polyverse.costs import CostCurve
    from polyverse.draft import Draft

    curve = CostCurve((1, 2, 64), (1.0, 1.04, 3.56))  # each row past the first costs 4% of a pass
    drafts = [Draft.chain([5, 6, 7])]
    assert allocate(drafts, [0.3], 1, curve) == [2]  # 1.39 tokens for 1.08 of the time: +29%
    assert allocate(drafts, [0.3], 1, curve, min_gain=0.3) == [0]  # which does not clear 30%
    assert allocate(drafts, [0.9], 1, curve, min_gain=0.3) == [3]


@pytest.mark.parametrize("kind", ["lean", "transformers"])
def test_a_multiverse_prompt_is_fed_in_chunks_between_the_other_requests_steps(models, kind):
    from polyverse.loop import PROMPT_CHUNK, PROMPT_PASS

    if kind not in models:
        pytest.skip("the lean pass does not run on this CPU")
    model = models[kind]
    # a backend whose rows get the same bits in any pass takes small chunks; another PROMPT_PASS-sized ones
    chunk = PROMPT_CHUNK if model.backend.shares_passes else PROMPT_PASS
    long_prompt = (TEXT * 40)[: min(4 * chunk + 10, model.max_length - 100)]
    options = {"guided": True, "paths": 2, "outline_tokens": 4, "max_path_tokens": 16}
    alone = model.generate(long_prompt, method="multiverse", options=options, max_new_tokens=60, chat=False).token_ids
    engine = Batch(model.pass_costs(), BatchConfig())
    mv = model.request(long_prompt, method="multiverse", options=options, max_new_tokens=60, chat=False)
    ar = model.request(TEXT, method="ar", max_new_tokens=8, chat=False)
    mv.join(engine, "mv")
    ar.join(engine, "ar")
    first_mv, rnd = None, 0
    while not (mv.done and ar.done):
        events, _ = engine.round()
        for ev in events:
            request = mv if ev.key == "mv" else ar
            if ev.key == "mv" and first_mv is None:
                first_mv = rnd
            request.push(ev.step)
        rnd += 1
        assert rnd < 500
    # the prompt took one round per chunk, in which the other request decoded a token each
    assert first_mv == -(-(len(mv.ids) - 1) // chunk) >= 1
    assert ar.result().token_ids == model.generate(TEXT, method="ar", max_new_tokens=8, chat=False).token_ids
    assert mv.result().token_ids == alone and len(alone) <= 60


def test_a_short_prompt_behind_a_long_one_starts_decoding_at_once(models):
    if "lean" not in models:
        pytest.skip("the lean pass does not run on this CPU")
    model = models["lean"]
    engine = Batch(model.pass_costs(), BatchConfig(prefill_chunk=16))
    long_one = model.request((TEXT * 20)[:400], method="ar", max_new_tokens=4, chat=False)
    short = model.request("abc", method="ar", max_new_tokens=4, chat=False)
    long_one.join(engine, "long")
    engine.round()  # the long prompt starts first
    short.join(engine, "short")
    first = {}
    for rnd in range(1, 200):
        events, stats = engine.round()
        assert stats.prompt_rows <= 16
        for ev in events:
            first.setdefault(ev.key, rnd)
            (long_one if ev.key == "long" else short).push(ev.step)
        if long_one.done and short.done:
            break
    assert first["short"] <= 2 < first["long"]  # its prompt went in beside the long one's, which went on
    assert short.result().token_ids == model.generate("abc", method="ar", max_new_tokens=4, chat=False).token_ids
