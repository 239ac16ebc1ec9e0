"""Multiverse SFT: tag tokens, samples cut like the engine, the batch mask, a smoke fit, CLI."""

import json

import torch

from polyverse.models.tiny import char_tokenizer, save_tiny, tiny_model
from polyverse.multiverse import attention
from polyverse.multiverse.sequence import encode, pieces
from polyverse.train.multiverse.data import IGNORE, TAGS, add_tag_tokens, collate, read_curated, structured_sample
from polyverse.train.multiverse.fit import MultiverseFitConfig, fit, meta

STRUCTURED = ("<Think>\n<Parallel>\n<Goal>\n<Outline>\n1: a\n</Outline>\n<Outline>\n2: b\n</Outline>\n</Goal>\n"
              "<Path>\n1: 2+2=4\n</Path>\n<Path>\n2: 3+3=6\n</Path>\n<Conclusion>\n4+6=10\n</Conclusion>\n</Parallel>\n</Think>\n#### 10")


def test_tag_tokens_are_single_plain_tokens_initialised_from_their_pieces():
    tok, model = char_tokenizer(), tiny_model(seed=0)
    before = model.get_input_embeddings().weight.detach().clone()
    pieces_of = {t: tok(t, add_special_tokens=False)["input_ids"] for t in TAGS}
    ids = add_tag_tokens(model, tok)
    assert len(set(ids)) == len(TAGS) and min(ids) >= before.shape[0]
    emb = model.get_input_embeddings().weight
    for tag, i in zip(TAGS, ids):
        assert tok(tag, add_special_tokens=False)["input_ids"] == [i]
        assert torch.allclose(emb[i], before[pieces_of[tag]].mean(0))
        head = model.get_output_embeddings().weight  # untied here: the head row too
        assert head.shape[0] == emb.shape[0]
    assert tok.decode(ids, skip_special_tokens=True) == "".join(TAGS)  # plain: decoding keeps them
    assert add_tag_tokens(model, tok) == ids  # idempotent


def test_sample_labels_follow_the_engine_pieces_and_collate_builds_the_training_mask():
    tok, model = char_tokenizer(), tiny_model(seed=0)
    add_tag_tokens(model, tok)
    s = structured_sample(tok, "What is 4+6?", STRUCTURED)
    ids, labels, _ = encode(pieces(STRUCTURED), tok)
    assert list(s.response[:-1]) == ids and list(s.labels[:-1]) == labels
    assert s.response[-1] == tok.eos_token_id
    batch = collate([s, structured_sample(tok, "Hi", "<Think>\nshort\n</Think>")], pad_id=0)
    n = len(s.prompt) + len(s.response)
    full = [()] * len(s.prompt) + list(s.labels)
    vis = batch["attention_mask"][0, 0, :n, :n] == 0
    assert torch.equal(vis, attention.mask(full))
    assert batch["position_ids"][0, :n].tolist() == attention.positions(full)
    assert (batch["labels"][0, : len(s.prompt)] == IGNORE).all() and batch["labels"][0, len(s.prompt)] == s.response[0]
    short = batch["labels"][1]
    assert (short[(batch["input_ids"][1] == 0)] == IGNORE).all()
    # padding rows see themselves only (no all-masked rows: no NaN)
    m = batch["attention_mask"][1, 0]
    assert ((m == 0).sum(-1) >= 1).all()


def test_smoke_fit_lowers_the_loss_and_the_adapter_round_trips(tmp_path):
    import polyverse
    from polyverse.train.common import save_adapter

    d = save_tiny(tmp_path / "m", seed=2)
    lm = polyverse.load(str(d), progress=False)
    rows = tmp_path / "curated.jsonl"
    rows.write_text("\n".join(json.dumps({"question": f"q{i}", "structured": STRUCTURED}) for i in range(4)))
    cfg = MultiverseFitConfig(steps=12, batch=2, lr=3e-3, lora_rank=4, lora_alpha=8, save_every=6)
    add_tag_tokens(lm.hf_model, lm.tokenizer)
    trained, history, tag_ids = fit(lm.hf_model, lm.tokenizer, read_curated(rows, lm.tokenizer), tmp_path / "out", cfg)
    assert history[-1]["ce"] < 0.7 * history[0]["ce"]
    save_adapter(trained, tmp_path / "out", meta(lm.tokenizer, cfg, str(rows), 4))
    doc = json.loads((tmp_path / "out" / "polyverse.json").read_text())
    assert doc["plain_tokens"] == list(TAGS)
    fresh = polyverse.load(str(d), adapter=str(tmp_path / "out"), progress=False)
    assert fresh.tokenizer("</Path>", add_special_tokens=False)["input_ids"] == [tag_ids[TAGS.index("</Path>")]]
    assert fresh.hf_model.get_input_embeddings().weight.shape[0] == len(lm.tokenizer)


def test_curate_cli_writes_structured_rows_and_rejects(tmp_path):
    from typer.testing import CliRunner

    from polyverse.cli import app

    src = tmp_path / "in.jsonl"
    rows = [
        {"question": "Ann has 2 bags of 3 apples and 4 boxes of 5 pears. How many fruits?",
         "answer": "Apples: 2*3=<<2*3=6>>6 apples.\nPears: 4*5=<<4*5=20>>20 pears.\nTotal: 6+20=<<6+20=26>>26 fruits.\n#### 26"},
        {"question": "Bob has 4 apples and eats 1. How many?", "answer": "4-1=<<4-1=3>>3\n#### 3"},
    ]
    src.write_text("\n".join(json.dumps(r) for r in rows))
    res = CliRunner().invoke(app, ["curate", "--in", str(src), "--out", str(tmp_path / "out.jsonl")])
    assert res.exit_code == 0, res.output
    assert "1 structured" in res.output and "1 rejected" in res.output
    good = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    assert "<Parallel>" in good["structured"] and good["method"] == "rules"
    bad = json.loads((tmp_path / "out.rejects.jsonl").read_text().splitlines()[0])
    assert bad["reason"] == "no independent steps"
    res = CliRunner().invoke(app, ["curate", "--in", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 2 and "no input file" in res.output
