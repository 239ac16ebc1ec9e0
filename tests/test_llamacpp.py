"""The llama.cpp backend: every method's greedy output equals llama.cpp greedy `ar` on the bundled GGUF."""

import pytest
import torch

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'polyverse[llamacpp]')")

import polyverse  # noqa: E402
from polyverse.errors import ConfigError  # noqa: E402

PROMPTS = [
    "Write a Python function that checks whether a number is prime.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Repeat this sentence twice: the quick brown fox jumps over the lazy dog.",
]
METHODS = [
    ("jacobi", {"block": 8}),
    ("lookahead", {"window": 4, "ngram": 3, "guesses": 4}),
    ("prompt_lookup", {}),
    ("auto", {}),
    ("multiverse", {}),  # the base model writes no tags: plain decoding through the engine
]


@pytest.fixture(scope="module")
def llm():
    return polyverse.load(backend="llamacpp", progress=False)


@pytest.fixture(scope="module")
def references(llm):
    return {p: llm.generate(p, method="ar", max_new_tokens=48) for p in PROMPTS}


@pytest.mark.bundled
@pytest.mark.parametrize("method, options", METHODS)
def test_every_method_equals_llamacpp_greedy_ar(llm, references, method, options):
    for p in PROMPTS:
        got = llm.generate(p, method=method, options=options, max_new_tokens=48)
        assert got.token_ids == references[p].token_ids, (method, p)
        assert got.stats.passes <= references[p].stats.passes + (1 if method == "multiverse" else 0)


@pytest.mark.bundled
def test_drafts_are_accepted_on_llamacpp(llm, references):
    got = llm.generate(PROMPTS[2], method="prompt_lookup", max_new_tokens=48)
    assert got.stats.mean_accepted > 1.2


@pytest.mark.bundled
def test_multiverse_runs_its_paths_on_llamacpp(llm):
    """Paths as llama.cpp sequences (prefix shared by seq_cp, merged into the parent's sequence)."""
    from polyverse.multiverse.grammar import validate

    opts = {"guided": True, "paths": 3, "max_path_tokens": 24}
    g = llm.generate("Give three tips for sleeping well.", method="multiverse", options=opts, max_new_tokens=320)
    assert g.text.count("<Path>") == 3 and validate(g.text) == []
    assert g.stats.mean_accepted > 1.5  # three paths per pass


def test_methods_that_cannot_run_say_so(llm):
    with pytest.raises(ConfigError, match="early_exit"):
        llm.generate("hi", method="early_exit", max_new_tokens=4)
    with pytest.raises(ConfigError, match="GGUF"):
        polyverse.load(adapter="space-gsm8k", backend="llamacpp", progress=False)
    with pytest.raises(ConfigError, match="unknown backend"):
        polyverse.load(backend="onnx", progress=False)


@pytest.fixture(scope="module")
def f16(tmp_path_factory):
    from polyverse.export import export_gguf
    from polyverse.models.load import bundled_gguf

    out = tmp_path_factory.mktemp("gguf") / "smollm2-f16.gguf"
    export_gguf(polyverse.load(progress=False), out, "f16", bundled_gguf())
    return polyverse.load(str(out), backend="llamacpp", progress=False)


@pytest.mark.bundled
def test_exported_f16_gguf_says_what_the_transformers_model_says(f16):
    fp32 = polyverse.load(progress=False, dtype="fp32")  # the weights exported, unrounded (the default pass is bf16)
    for p in PROMPTS:
        want = fp32.generate(p, method="ar", max_new_tokens=48)
        got = f16.generate(p, method="ar", max_new_tokens=48)
        assert got.token_ids == want.token_ids and got.text == want.text, p


@pytest.mark.bundled
def test_exported_adapter_runs_on_llamacpp(tmp_path):
    """The Multiverse fine-tune exported with its tag tokens: llama.cpp reads them as single tokens."""
    from polyverse.export import export_gguf
    from polyverse.models.load import bundled_gguf

    adapted = polyverse.load(adapter="multiverse-gsm8k", progress=False)
    out = export_gguf(adapted, tmp_path / "mv.gguf", "q8_0", bundled_gguf())
    llm = polyverse.load(str(out), backend="llamacpp", progress=False)
    assert llm.backend.vocab_size == adapted.hf_model.get_input_embeddings().weight.shape[0]
    g = llm.generate(PROMPTS[1], method="ar", max_new_tokens=24)
    want = adapted.generate(PROMPTS[1], method="ar", max_new_tokens=24)
    assert g.text.startswith("<Think>") and want.text.startswith("<Think>")


def test_export_rejects_bad_input(tmp_path):
    from typer.testing import CliRunner

    from polyverse.cli import app

    r = CliRunner().invoke(app, ["export", "gguf", "--out", str(tmp_path / "x.gguf"), "--type", "q4"])
    assert r.exit_code == 2 and "--type must be one of" in r.output
    r = CliRunner().invoke(app, ["export", "gguf", "--out", str(tmp_path / "x.bin")])
    assert r.exit_code == 2 and ".gguf" in r.output


@pytest.mark.bundled
def test_space_on_llamacpp_with_the_exported_adapter(tmp_path, llm):
    from polyverse.export import ADAPTER_KEY, adapter_info, export_gguf
    from polyverse.methods.jacobi import trained_block
    from polyverse.methods.space import trained_k
    from polyverse.models.load import bundled_gguf

    out = export_gguf(polyverse.load(adapter="space-gsm8k", progress=False), tmp_path / "space.gguf", "f16", bundled_gguf())
    spc = polyverse.load(str(out), backend="llamacpp", progress=False)
    # the adapter's polyverse.json travels in the GGUF: llama.cpp runs keep the trained defaults
    assert llm.backend.meta(ADAPTER_KEY) is None  # the bundled GGUF
    assert adapter_info(spc.backend.meta(ADAPTER_KEY))["method"] == "space" and trained_k(spc, default=9) == 3
    assert adapter_info("not json") is None and adapter_info("[1]") is None and adapter_info(None) is None
    assert trained_block(spc, default=9) == 9  # a SPACE adapter says nothing about Jacobi's block
    for p in PROMPTS:
        ref = spc.generate(p, method="ar", max_new_tokens=40)
        for k in (1, 2):
            got = spc.generate(p, method="space", options={"k": k}, max_new_tokens=40)
            assert got.token_ids == ref.token_ids, (k, p)


def test_amx_cpus_are_detected_from_cpuinfo(tmp_path):
    """On AMX CPUs the backend keeps ggml's plain weight layout (its AMX matmul crashed llama_decode)."""
    from polyverse.backends.llamacpp import _cpu_has_amx

    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile\n")
    assert not _cpu_has_amx(str(info))
    info.write_text("flags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_int8 amx_tile\n")
    assert _cpu_has_amx(str(info))
    assert not _cpu_has_amx(str(tmp_path / "missing"))


@pytest.mark.bundled
def test_sessions_share_the_loaded_weights_and_decode_alike(llm, references):
    """A session is a context of its own over the same loaded model (not a second copy of it), and
    requests batched through sessions (one pass each per round) get llama.cpp greedy's tokens."""
    twin = llm.session()
    assert twin.backend.weights is llm.backend.weights and twin.backend.ctx != llm.backend.ctx
    got = llm.generate_batch(PROMPTS, method="auto", max_new_tokens=48, concurrency=3)
    assert [g.token_ids for g in got] == [references[p].token_ids for p in PROMPTS]


@pytest.mark.bundled
def test_logits_held_past_the_next_pass_keep_their_rows(llm, monkeypatch):
    """A pass's logits are read where llama.cpp wrote them; the backend copies them out before its
    next pass only while someone still holds them, so a held pass's rows never change under it and
    a plain step that held nothing copies nothing."""
    from polyverse.layout import chain_feed
    from polyverse.logits import Borrowed, first_maxes

    copied = []
    settle = Borrowed.settle
    monkeypatch.setattr(Borrowed, "settle", lambda self: (self._all is None and copied.append(True)) or settle(self))
    be = llm.session().backend
    ids = llm.encode("The capital of France is")
    be.reset()
    held = be.forward(chain_feed(ids, 0), logits_for=[len(ids) - 2, len(ids) - 1])
    tops = [held.top(0), held.top(1)]  # found in llama.cpp's buffer, nothing copied
    be.commit(range(len(ids)))
    assert copied == []
    dropped = be.forward(chain_feed([tops[1]], len(ids)))  # overwrites llama.cpp's buffer
    assert copied == [True] and held.computed() == 2  # held: copied before that pass
    rows = held[:]  # [2, V]
    assert first_maxes(rows) == tops and len(set(first_maxes(rows) + [dropped.top(0)])) > 1
    next_token = dropped.top(0)
    del dropped
    be.commit([0])
    be.forward(chain_feed([next_token], len(ids) + 1))
    assert copied == [True]  # the pass nobody held was not copied


def test_bench_names_the_gguf_weight_type(llm):
    from polyverse.bench.runner import weight_type

    assert weight_type(llm) == "Q4_1 (llama.cpp)"  # the bundled GGUF's own type, not the transformers path's
