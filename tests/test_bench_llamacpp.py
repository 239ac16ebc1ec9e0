"""The llama.cpp peer of `polyverse bench` on a tiny random model exported to GGUF."""

import json
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'polyverse[llamacpp]')")

from typer.testing import CliRunner  # noqa: E402

from polyverse.api import Model  # noqa: E402
from polyverse.bench.contenders import Contender  # noqa: E402
from polyverse.bench.data import load_set  # noqa: E402
from polyverse.bench.llamacpp_peer import F16_ROW, cached_path, f16_gguf, peer, row_name, weight_type  # noqa: E402
from polyverse.bench.runner import BenchConfig, run_bench  # noqa: E402
from polyverse.cli import app  # noqa: E402


def metadata_gguf(model, path: Path) -> Path:
    """A GGUF holding only the tiny model's architecture numbers and its character vocabulary: the
    "original GGUF" that export reads its metadata from (the bundled model has a real one)."""
    import gguf

    cfg = model.hf_model.config
    vocab = cfg.vocab_size
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_tokenizer_model("llama")
    w.add_token_list(model.tokenizer.convert_ids_to_tokens(list(range(vocab))))
    w.add_token_scores([0.0] * vocab)
    w.add_token_types([int(gguf.TokenType.UNKNOWN)] + [int(gguf.TokenType.CONTROL)] * 2
                      + [int(gguf.TokenType.NORMAL)] * (vocab - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def source(tiny, tmp_path_factory):
    return metadata_gguf(tiny, tmp_path_factory.mktemp("src") / "tiny-meta.gguf")


@pytest.fixture(scope="module")
def f16(tiny, source, tmp_path_factory):
    from polyverse.export import export_gguf

    return export_gguf(tiny, tmp_path_factory.mktemp("f16") / "tiny-f16.gguf", "f16", source)


@pytest.fixture(scope="module")
def on_llamacpp(tiny, f16):
    """The tiny model on the llama.cpp backend, decoding the F16 file."""
    from polyverse.backends.llamacpp import LlamaCppBackend

    return Model(tiny.hf_model, tiny.tokenizer, "tiny@llamacpp", backend=LlamaCppBackend(f16))


def test_peer_row_equals_llamacpp_ar_greedy(on_llamacpp, f16):
    sets = [load_set("mtbench-like", on_llamacpp, 3)]
    llama = peer(f16)
    assert llama.name == F16_ROW and llama.is_peer
    doc = run_bench(on_llamacpp, [llama, Contender("ar", "ar")], sets, BenchConfig(max_new_tokens=24, baseline=F16_ROW))
    rows = doc["sets"]["mtbench-like"]
    assert rows[F16_ROW]["summary"]["exact"] == 3 and rows[F16_ROW]["summary"]["ratio_median"] == 1.0
    assert rows[F16_ROW]["summary"]["tokens_per_pass"] == 1.0
    for p in sets[0].prompts:  # token for token, and not a trivially short output
        want = on_llamacpp.generate(list(p.ids), method="ar", max_new_tokens=24).token_ids
        got = llama.run(on_llamacpp, list(p.ids), 24)
        assert got.tokens == list(want) and len(got.tokens) >= 2 and got.passes == len(got.tokens)


def test_peer_stops_at_eos_and_at_the_token_budget(on_llamacpp, f16):
    llama = peer(f16)
    runs = [(list(p.ids), llama.run(on_llamacpp, list(p.ids), 40).tokens) for p in load_set("mtbench-like", on_llamacpp, 6).prompts]
    ids, full = max(runs, key=lambda r: len(r[1]))
    assert len(full) >= 6
    assert llama.run(on_llamacpp, ids, 5).tokens == full[:5]
    eos = full[3]  # pretend the fourth token is the end of text: the run stops there, like the other rows
    tokens, _ = llama.engine.run(ids, 40, [eos])
    assert tokens == full[: full.index(eos) + 1]


def test_f16_export_is_cached_and_an_f16_source_used_as_is(tiny, source, f16, tmp_path, monkeypatch):
    monkeypatch.setenv("POLYVERSE_CACHE", str(tmp_path / "cache"))
    started = []
    first = f16_gguf(tiny, source, start=lambda n: started.append(n) or (lambda name: None))
    assert first == cached_path(source, None) and first.is_file() and weight_type(first) == "F16"
    assert started and started[0] > 0
    again = f16_gguf(tiny, source, start=lambda n: started.append(n) or (lambda name: None))
    assert again == first and len(started) == 1  # no second export
    assert f16_gguf(tiny, f16) == f16  # already F16, no adapter: nothing to export
    assert row_name(f16) == F16_ROW


def test_bench_command_with_the_llamacpp_peer_as_baseline(tiny_dir, f16, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["bench", "--model", str(tiny_dir), "--data", "mtbench-like", "--limit", "2", "-n", "8",
                                 "--methods", "ar", "--peers", "generate,llamacpp", "--peer-gguf", str(f16),
                                 "--baseline", "llamacpp", "--out", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "results.json").read_text())
    rows = doc["sets"]["mtbench-like"]
    assert list(rows) == ["generate", "generate(prompt_lookup=10)", F16_ROW, "ar"]
    assert doc["config"]["baseline"] == F16_ROW and rows[F16_ROW]["summary"]["ratio_median"] == 1.0
    assert rows[F16_ROW]["summary"]["judged"] == 2  # judged against ar like every peer
    r = CliRunner().invoke(app, ["bench", "--model", str(tiny_dir), "--data", "mtbench-like", "--limit", "1", "-n", "4",
                                 "--methods", "ar", "--peers", "llamacpp", "--peer-gguf", str(f16),
                                 "--baseline", "ar", "--out", str(tmp_path / "only")])
    assert r.exit_code == 0, r.output
    assert list(json.loads((tmp_path / "only" / "results.json").read_text())["sets"]["mtbench-like"]) == [F16_ROW, "ar"]


@pytest.mark.parametrize("args,message", [
    (["--peers", "warp"], "unknown peer 'warp'"),
    (["--peers", "none,generate"], "--peers none names no other peer"),
    (["--peers", "generate", "--no-peers"], "exclude each other"),
    (["--peers", "generate", "--baseline", "llamacpp"], "names the llama.cpp peer, which is not in this run"),
    (["--peers", "llamacpp", "-t", "0.5"], "decodes greedily"),
    (["--peers", "llamacpp", "--model", "/tmp"], "has no GGUF to export from"),
    (["--peers", "generate", "--peer-gguf", "x.gguf"], "--peers leaves that peer out"),
    (["--peer-gguf", "/nonexistent/x.gguf"], "no GGUF file /nonexistent/x.gguf"),
])
def test_peer_choice_errors_are_one_clear_line(args, message):
    r = CliRunner().invoke(app, ["bench", *args])
    assert r.exit_code == 2, r.output
    assert message in r.stderr
    assert "Traceback" not in r.output and len(r.stderr.strip().splitlines()) == 1


def test_batch_check_lines_up_rows_with_the_one_token_reference(on_llamacpp):
    """k = 1 replays the reference pass for pass: no difference at all, so the rows line up;
    bigger k is measured, and any difference comes with its margin."""
    from polyverse.bench.llamacpp_batch import BatchConfig, measure, table

    prompts = [p.ids for p in load_set("mtbench-like", on_llamacpp, 2).prompts]
    doc = measure(on_llamacpp.backend, prompts, BatchConfig(max_new_tokens=10, ks=(1, 4)), on_llamacpp.eos_token_ids)
    one, four = doc["summary"][1], doc["summary"][4]
    assert one["differ"] == 0 and one["max_abs_logit_diff"] == 0.0 and one["prompts"] == 2
    assert four["positions"] == sum(r["new_tokens"] for r in doc["prompts"]) >= 2
    assert len(four["first_margins"]) == four["prompts_differ"]
    assert four["max_abs_logit_diff"] < 0.5  # float noise, not a misaligned row
    assert one["max_abs_diff_vs_first_k"] == 0.0 and four["max_abs_diff_vs_first_k"] == four["max_abs_logit_diff"]
    assert doc["whole_prompt"]["prompts"] == 2 and len(table(doc)) == 2


def test_batch_check_command(tiny_dir, f16, tmp_path):
    out = tmp_path / "batch.json"
    r = CliRunner().invoke(app, ["bench", "llamacpp-batch", "--model", str(tiny_dir), "--gguf", str(f16), "--limit", "2",
                                 "-n", "6", "--ks", "1,3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "argmax differs" in r.stdout and "vs k=1" in r.stdout and "whole prompt in one pass" in r.stdout
    doc = json.loads(out.read_text())
    assert set(doc["summary"]) == {"1", "3"} and doc["summary"]["1"]["differ"] == 0
    r = CliRunner().invoke(app, ["bench", "llamacpp-batch", "--ks", "0"])
    assert r.exit_code == 2 and "--ks takes positive pass sizes" in r.stderr
