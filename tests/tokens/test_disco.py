"""DisCo token training on the micro pipeline: only the new row learns, grad depth matters."""

from __future__ import annotations

import pytest
import torch

from augment.config import GenerateConfig, TokenConfig
from augment.errors import AugmentError
from augment.tokens.disco import (
    DiscoTrainer,
    Validation,
    choose_init_token,
    learning_rate,
    project_to_trust_region,
)
from augment.tokens.textual_inversion import (
    add_embeddings,
    installed_tokens,
    load_tokens,
    read_token_embedding,
    save_token,
    single_token_id,
)

EMB_KEY = "embeddings.token_embedding.weight"


def _cfg(**kw) -> TokenConfig:
    base = dict(batch_size=2, steps=3, max_steps=2, patience=5, acc_threshold=1.1, lr=0.05,
                guidance_scale=3.0, grad_steps="all", checkpointing=True, val_seeds=2, val_every=1)
    base.update(kw)
    return TokenConfig(**base)


def test_training_leaves_the_pipeline_as_it_was(micro_pipe, micro_classifier):
    """The token's row exists only while it trains: afterwards the tokenizer, the embedding table
    and every weight are those of the pipeline before (a host's pipeline serves later stages)."""
    before = {k: v.clone() for k, v in micro_pipe.text_encoder.state_dict().items()}
    unet_before = {k: v.clone() for k, v in micro_pipe.unet.state_dict().items()}
    vocab, width = dict(micro_pipe.tokenizer.get_vocab()), before[EMB_KEY].shape[1]
    trainer = DiscoTrainer(micro_pipe, micro_classifier, _cfg(), run_seed=0, resolution=32)
    res = trainer.train(1, "dog")
    assert res.status == "ok", res.error
    assert res.steps == 2 and len(res.history) == 2
    assert micro_pipe.tokenizer.get_vocab() == vocab and micro_pipe.text_encoder.config.vocab_size == len(vocab)
    for k, v in micro_pipe.text_encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in micro_pipe.unet.state_dict().items():
        assert torch.equal(v, unet_before[k]), k
    assert res.embedding.shape == (1, width)
    assert [v.step for v in res.validations] == [0, 1, 2]
    # the kept vector is the initialiser exactly when no validation beat it
    init = before[EMB_KEY][single_token_id(micro_pipe.tokenizer, "dog")]
    assert torch.equal(res.embedding[0], init) == (res.best_step == 0)
    assert trainer.train(1, "dog").embedding.equal(res.embedding)  # a second class in the same worker: the same


def test_gradient_reaches_token_for_grad_steps_1_and_all(micro_pipe, micro_classifier):
    norms = {}
    for gs in (1, "all"):
        trainer = DiscoTrainer(micro_pipe, micro_classifier, _cfg(grad_steps=gs), run_seed=0, resolution=32)
        token_cls = 0 if gs == 1 else 2
        captured = {}

        orig_step = torch.optim.AdamW.step

        def spy(self, *a, _captured=captured, _orig=orig_step, **k):
            _captured["grad"] = self.param_groups[0]["params"][0].grad.clone()
            return _orig(self, *a, **k)

        torch.optim.AdamW.step = spy
        try:
            trainer.train(token_cls, "cat" if gs == 1 else "bird")
        finally:
            torch.optim.AdamW.step = orig_step
        norms[gs] = float(captured["grad"].norm())
    assert norms[1] > 0 and norms["all"] > 0
    assert norms[1] != pytest.approx(norms["all"])


def test_init_token_rules(micro_pipe):
    tok = micro_pipe.tokenizer
    assert choose_init_token(tok, "red fox", TokenConfig()) == "fox"
    assert choose_init_token(tok, "zzqx", TokenConfig(init_fallback="a")) == "a"
    assert choose_init_token(tok, "zzqx", TokenConfig(init_token="bird")) == "bird"
    with pytest.raises(AugmentError, match="not a single token"):
        choose_init_token(tok, "cat", TokenConfig(init_token="zzqx"))


def test_existing_token_refused(micro_pipe, micro_classifier):
    """A token the model came with (or one an enclosing block installed) is never shadowed."""
    micro_pipe.tokenizer.add_tokens(["<c0002>"])  # as if the model shipped with it
    with pytest.raises(AugmentError, match="already contains"):
        DiscoTrainer(micro_pipe, micro_classifier, _cfg(max_steps=1), run_seed=0, resolution=32).train(2, "cat")
    hidden = micro_pipe.text_encoder.config.hidden_size
    with installed_tokens(micro_pipe, {"<c0007>": torch.zeros(1, hidden)}):
        with pytest.raises(AugmentError, match="already contains '<c0007>'"):
            with installed_tokens(micro_pipe, {"<c0007>": torch.ones(1, hidden)}):
                pass
    assert "<c0007>" not in micro_pipe.tokenizer.get_vocab()


def test_token_file_loads_in_fresh_pipeline(micro_pipe, micro_pipeline_dir, tmp_path):
    from augment.models.backbone import load_backbone

    vec = torch.randn(1, micro_pipe.text_encoder.config.hidden_size)
    path = tmp_path / "0001-dog.safetensors"
    save_token(path, "<c0001>", vec)
    fresh = load_backbone(str(micro_pipeline_dir))
    assert load_tokens(fresh, [path]) == ["<c0001>"]
    tid = fresh.tokenizer.convert_tokens_to_ids("<c0001>")
    assert torch.allclose(fresh.text_encoder.get_input_embeddings().weight[tid], vec[0])
    # diffusers' own call works with the token in a prompt
    out = fresh("a photo of a <c0001> dog", num_inference_steps=2, output_type="pt", height=32, width=32)
    assert out.images.shape == (1, 3, 32, 32)


def test_token_embedding_loads_in_memory_like_its_file(micro_pipe, micro_pipeline_dir, tmp_path):
    """What the driver reads (token, vectors, sha256 of the bytes) loads into a pipeline with no file:
    the same rows as diffusers loading the files themselves, in any order of classes."""
    import hashlib
    import pickle

    from augment.models.backbone import load_backbone

    hidden = micro_pipe.text_encoder.config.hidden_size
    paths = [tmp_path / "0001-dog.safetensors", tmp_path / "0002-bird.safetensors"]
    shas = [save_token(paths[0], "<c0001>", torch.randn(1, hidden)), save_token(paths[1], "<c0002>", torch.randn(2, hidden))]
    embs = [read_token_embedding(p) for p in paths]
    assert [e.sha256 for e in embs] == shas == [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    from_files = load_backbone(str(micro_pipeline_dir))
    from_files.load_textual_inversion([str(p) for p in paths])
    embs = pickle.loads(pickle.dumps(embs))  # as it crosses to a worker
    for p in paths:
        p.unlink()
    in_memory = load_backbone(str(micro_pipeline_dir))
    assert add_embeddings(in_memory, embs) == ["<c0001>", "<c0002>"]
    assert "<c0002>_1" in in_memory.tokenizer.get_vocab()  # a 2-vector (CASO) token adds token_1
    torch.testing.assert_close(in_memory.text_encoder.get_input_embeddings().weight,
                               from_files.text_encoder.get_input_embeddings().weight, rtol=0, atol=0)


def test_installed_tokens_leave_the_pipeline_exactly_as_it_was(micro_pipe):
    """Inside the block the tokens are there (a 2-vector one as token, token_1); after it the
    tokenizer, its length, the embedding table (the same tensor, the same bytes) and the text
    encoder's vocab_size are those from before, also when the block wrote into the added rows."""
    tokenizer, text_encoder = micro_pipe.tokenizer, micro_pipe.text_encoder
    layer = text_encoder.get_input_embeddings()
    vocab, n, table = dict(tokenizer.get_vocab()), len(tokenizer), layer.weight.detach().clone()
    hidden = text_encoder.config.hidden_size
    tokens = {"<c0001>": torch.randn(1, hidden), "<c0002>": torch.randn(2, hidden)}
    with installed_tokens(micro_pipe, tokens) as names:
        assert names == ["<c0001>", "<c0002>"] and len(tokenizer) == n + 3
        ids = tokenizer.convert_tokens_to_ids(["<c0001>", "<c0002>", "<c0002>_1"])
        weight = text_encoder.get_input_embeddings().weight
        torch.testing.assert_close(weight[ids], torch.cat(list(tokens.values())), rtol=0, atol=0)
        with torch.no_grad():
            weight[ids] = 0.0  # what training in the block may do to its rows
    assert len(tokenizer) == n and tokenizer.get_vocab() == vocab and text_encoder.config.vocab_size == n
    assert text_encoder.get_input_embeddings() is layer and layer.num_embeddings == n
    assert torch.equal(layer.weight, table)
    with pytest.raises(ValueError, match="inside"):
        with installed_tokens(micro_pipe, tokens):
            raise ValueError("inside")
    assert tokenizer.get_vocab() == vocab and torch.equal(layer.weight, table)  # also when the block fails


def test_corrupt_token_file_is_one_line(tmp_path):
    bad = tmp_path / "0001-dog.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(AugmentError, match="cannot read token file .*re-run `augment tokens`"):
        read_token_embedding(bad)


def test_nan_loss_marks_failed(micro_pipe, micro_classifier, monkeypatch):
    trainer = DiscoTrainer(micro_pipe, micro_classifier, _cfg(max_steps=3), run_seed=0, resolution=32)
    monkeypatch.setattr(trainer.classifier, "forward", lambda x: torch.full((x.shape[0], 3), float("nan")))
    res = trainer.train(0, "cat")
    assert res.status == "failed" and "nan" in res.error.lower()


def test_training_hands_the_sampler_unscaled_seeded_noise(micro_pipe, micro_classifier, monkeypatch):
    """The sampler scales the starting noise once the schedule is set (Euler's init sigma depends on
    it), so token training must pass the plain seeded noise and the seeds that made it (they also
    seed a stochastic scheduler's step noise)."""
    from augment.models.backbone import set_scheduler
    from augment.models.diffusion import Diffusion

    set_scheduler(micro_pipe, "euler")
    calls = []
    sample = Diffusion.sample_latents

    def spy(self, latents, *args, **kwargs):
        calls.append((latents.detach().clone(), list(kwargs["seeds"])))
        return sample(self, latents, *args, **kwargs)

    monkeypatch.setattr(Diffusion, "sample_latents", spy)
    trainer = DiscoTrainer(micro_pipe, micro_classifier, _cfg(max_steps=1), run_seed=0, resolution=32)
    assert trainer.train(1, "dog").status == "ok"
    assert calls
    for latents, seeds in calls:
        assert torch.equal(latents, trainer.diffusion.initial_latents(seeds, 32, torch.float32))


def _scripted_scores(monkeypatch, trainer, accuracies):
    """Validation accuracies in order (initialiser first), whatever the images: selection logic alone."""
    scores = iter(accuracies)
    monkeypatch.setattr(trainer, "_score", lambda logits, c, step: Validation(step, next(scores), 1.0 - 0.01 * step))


def test_initialiser_kept_when_no_step_beats_it_and_patience_counts_validations(micro_pipe, micro_classifier,
                                                                                  monkeypatch):
    trainer = DiscoTrainer(micro_pipe, micro_classifier, _cfg(max_steps=20, patience=2, val_every=3),
                           run_seed=0, resolution=32)
    _scripted_scores(monkeypatch, trainer, [0.5, 0.25, 0.5, 0.0, 0.0])
    res = trainer.train(1, "dog")
    assert res.status == "ok", res.error
    # 0.5 at step 6 ties the initialiser's 0.5 but has the lower loss (1 - 0.06): it wins the tie
    assert [(v.step, v.accuracy) for v in res.validations] == [(0, 0.5), (3, 0.25), (6, 0.5), (9, 0.0), (12, 0.0)]
    assert res.best_step == 6 and res.steps == 12  # stopped after 2 validations without a better one
    assert res.init_val_accuracy == 0.5 and res.final_val_accuracy == 0.5

    trainer = DiscoTrainer(micro_pipe, micro_classifier, _cfg(max_steps=20, patience=2, val_every=2),
                           run_seed=0, resolution=32)
    _scripted_scores(monkeypatch, trainer, [0.75, 0.5, 0.25])
    res = trainer.train(2, "bird")
    assert res.best_step == 0 and res.steps == 4 and res.final_val_accuracy == 0.75
    init_row = micro_pipe.text_encoder.get_input_embeddings().weight[single_token_id(micro_pipe.tokenizer, "bird")]
    assert torch.equal(res.embedding[0], init_row.detach().float())


def test_threshold_on_validation_stops_before_any_step(micro_pipe, micro_classifier, monkeypatch):
    trainer = DiscoTrainer(micro_pipe, micro_classifier, _cfg(max_steps=5, acc_threshold=0.9), run_seed=0, resolution=32)
    _scripted_scores(monkeypatch, trainer, [1.0])
    res = trainer.train(0, "cat")
    assert res.steps == 0 and res.history == [] and res.final_val_accuracy == 1.0


def test_validation_seeds_are_fixed_and_disjoint(micro_pipe, micro_classifier):
    trainer = DiscoTrainer(micro_pipe, micro_classifier, _cfg(val_seeds=8, fresh_seeds=True, batch_size=4),
                           run_seed=0, resolution=32)
    val = trainer.validation_seeds(3)
    assert val == trainer.validation_seeds(3) and len(set(val)) == 8
    train = {s for step in range(50) for s in trainer.seeds_for(3, step)}
    assert not set(val) & train and set(val) != set(trainer.validation_seeds(4))


def test_history_json_records_steps_and_validations(micro_pipe, micro_classifier):
    trainer = DiscoTrainer(micro_pipe, micro_classifier, _cfg(max_steps=2, val_every=2, lr_schedule="cosine"),
                           run_seed=0, resolution=32)
    h = trainer.train(1, "dog").history_json()
    assert [s["step"] for s in h["steps"]] == [1, 2]
    assert h["steps"][0]["lr"] == pytest.approx(0.05) and h["steps"][1]["lr"] == pytest.approx(0.025)
    assert [v["step"] for v in h["validations"]] == [0, 2]
    assert all(0.0 <= v["accuracy"] <= 1.0 and v["loss"] >= 0 for v in h["validations"])


def test_relative_step_size_and_trust_region():
    init = torch.tensor([[3.0, 4.0, 0.0, 0.0]])  # norm 5, D 4
    cfg = TokenConfig(step_size=0.2, max_steps=10, lr_schedule="cosine")
    assert learning_rate(cfg, init, 0) == pytest.approx(0.2 * 5 / 2)
    assert learning_rate(cfg, init, 5) == pytest.approx(0.25)
    assert learning_rate(TokenConfig(lr=0.01), init, 7) == 0.01
    v = init[0] + torch.tensor([0.0, 0.0, 30.0, 40.0])
    project_to_trust_region(v, init[0], 0.5)
    assert float((v - init[0]).norm()) == pytest.approx(2.5)
    inside = init[0] + 0.1
    project_to_trust_region(inside, init[0], 0.5)
    assert torch.equal(inside, init[0] + 0.1)


def test_multi_vector_token_loads_with_diffusers(micro_pipe, micro_classifier, micro_pipeline_dir, tmp_path):
    from augment.models.backbone import load_backbone

    trainer = DiscoTrainer(micro_pipe, micro_classifier, _cfg(n_vectors=3), run_seed=0, resolution=32)
    assert trainer.prompts_for("<c0001>", "dog")[0] == "A photo of a <c0001> <c0001>_1 <c0001>_2 dog"
    res = trainer.train(1, "dog")
    assert res.status == "ok" and res.embedding.shape == (3, micro_pipe.text_encoder.config.hidden_size)
    path = tmp_path / "0001-dog.safetensors"
    save_token(path, res.token, res.embedding)
    fresh = load_backbone(str(micro_pipeline_dir))
    fresh.load_textual_inversion([str(path)])
    emb = fresh.text_encoder.get_input_embeddings().weight
    ids = fresh.tokenizer.convert_tokens_to_ids(["<c0001>", "<c0001>_1", "<c0001>_2"])
    torch.testing.assert_close(emb[ids], res.embedding, rtol=0, atol=0)
    assert fresh.maybe_convert_prompt("a <c0001> dog", fresh.tokenizer) == "a <c0001> <c0001>_1 <c0001>_2 dog"


def test_negative_prompt_names_the_confused_classes(micro_pipe, micro_classifier):
    names = ["cat", "dog", "bird"]
    gen = GenerateConfig(prompts=["a photo of a {token} {name}"], negative_prompt="blurry")
    trainer = DiscoTrainer(micro_pipe, micro_classifier, _cfg(negative_confusers=1), run_seed=0, resolution=32,
                           generation=gen, class_names=names)
    logits = torch.eye(3)[[0, 2, 2, 1, 0]]  # class 0's images: predicted 0, 2, 2, 1, 0
    assert trainer.negative_prompt(logits, 0) == "blurry, a photo of a bird"
    trainer.cfg.negative_confusers = 5
    assert trainer.negative_prompt(logits, 0) == "blurry, a photo of a bird, a photo of a dog"
    assert trainer.negative_prompt(torch.eye(3)[[0, 0]], 0) == "blurry"  # never confused: the plain one
    trainer.cfg.negative_confusers = 0
    assert trainer.negative_prompt(logits, 0) == "blurry"


def test_token_settings_refused(tmp_path):
    from augment.config import Config, validate

    for bad, match in ((dict(lr_schedule="linear"), "lr_schedule"), (dict(val_seeds=0), "val_seeds"),
                       (dict(trust_radius=-1.0), "trust_radius"), (dict(n_vectors=0), "n_vectors")):
        with pytest.raises(AugmentError, match=match):
            validate(Config(tokens=TokenConfig(**bad)))
