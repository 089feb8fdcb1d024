"""DisCo token training on the micro pipeline: only the new row learns, grad depth matters."""

from __future__ import annotations

import pytest
import torch

from augment.config import TokenConfig
from augment.errors import AugmentError
from augment.tokens.disco import DiscoTrainer, choose_init_token
from augment.tokens.textual_inversion import (
    add_embeddings,
    add_token,
    load_tokens,
    read_token_embedding,
    save_token,
    single_token_id,
)

EMB_KEY = "embeddings.token_embedding.weight"


def _cfg(**kw) -> TokenConfig:
    base = dict(batch_size=2, steps=3, max_steps=2, patience=5, acc_threshold=1.1, lr=0.05,
                guidance_scale=3.0, grad_steps="all", checkpointing=True)
    base.update(kw)
    return TokenConfig(**base)


def test_only_the_new_row_changes(micro_pipe, micro_classifier):
    before = {k: v.clone() for k, v in micro_pipe.text_encoder.state_dict().items()}
    unet_before = {k: v.clone() for k, v in micro_pipe.unet.state_dict().items()}
    n_rows = before[EMB_KEY].shape[0]
    trainer = DiscoTrainer(micro_pipe, micro_classifier, _cfg(), run_seed=0, resolution=32)
    res = trainer.train(1, "dog")
    assert res.status == "ok", res.error
    assert res.steps == 2 and len(res.history) == 2
    emb = micro_pipe.text_encoder.get_input_embeddings().weight
    assert emb.shape[0] == n_rows + 1
    assert torch.equal(emb[:n_rows], before[EMB_KEY])
    for k, v in micro_pipe.text_encoder.state_dict().items():
        if "token_embedding" not in k:
            assert torch.equal(v, before[k]), k
    for k, v in micro_pipe.unet.state_dict().items():
        assert torch.equal(v, unet_before[k]), k
    assert res.embedding.shape == (1, emb.shape[1])
    # the learned vector left in the table is the best one, and it moved away from its initialiser
    assert torch.equal(emb[n_rows], res.embedding[0])
    init_id = single_token_id(micro_pipe.tokenizer, "dog")
    if res.history[1][0] < res.history[0][0]:
        assert not torch.equal(emb[n_rows], emb[init_id])


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


def test_existing_token_refused(micro_pipe):
    init = single_token_id(micro_pipe.tokenizer, "a")
    add_token(micro_pipe, "<c0007>", init)
    with pytest.raises(AugmentError, match="already contains"):
        add_token(micro_pipe, "<c0007>", init)


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
    assert add_embeddings(in_memory, embs[:1]) == ["<c0001>"]  # already present: rewritten, not an error
    assert "<c0002>_1" in in_memory.tokenizer.get_vocab()  # a 2-vector (CASO) token adds token_1
    torch.testing.assert_close(in_memory.text_encoder.get_input_embeddings().weight,
                               from_files.text_encoder.get_input_embeddings().weight, rtol=0, atol=0)


def test_loading_a_held_token_again_overwrites_its_rows(micro_pipe):
    """A pipeline cached for several stages may hold a token already (trained there, or loaded for
    an earlier stage): loading it again rewrites its rows with the new vectors and adds nothing."""
    from augment.tokens.textual_inversion import TokenEmbedding, added_tokens

    hidden = micro_pipe.text_encoder.config.hidden_size
    first = [TokenEmbedding("<c0001>", torch.randn(1, hidden), "a"), TokenEmbedding("<c0002>", torch.randn(2, hidden), "b")]
    add_embeddings(micro_pipe, first)
    vocab = len(micro_pipe.tokenizer)
    rows = micro_pipe.text_encoder.get_input_embeddings().weight.shape[0]
    again = [TokenEmbedding(e.token, torch.randn_like(e.vectors), e.sha256) for e in first]
    assert add_embeddings(micro_pipe, again) == ["<c0001>", "<c0002>"]
    assert len(micro_pipe.tokenizer) == vocab and micro_pipe.text_encoder.get_input_embeddings().weight.shape[0] == rows
    weight = micro_pipe.text_encoder.get_input_embeddings().weight
    for e in again:
        ids = micro_pipe.tokenizer.convert_tokens_to_ids([e.token] + [f"{e.token}_{i}" for i in range(1, len(e.vectors))])
        torch.testing.assert_close(weight[ids], e.vectors, rtol=0, atol=0)
    assert {"<c0001>", "<c0002>", "<c0002>_1"} <= added_tokens(micro_pipe)
    with pytest.raises(AugmentError, match="another number of vectors"):
        add_embeddings(micro_pipe, [TokenEmbedding("<c0002>", torch.randn(1, hidden), "c")])


def test_a_token_loaded_into_a_cached_pipeline_can_be_trained_again(micro_pipe, micro_classifier):
    """A pipeline that loaded <c0001> for a generate stage (augment added it) trains it again in a
    later token stage; a token that came with the model is still refused."""
    from augment.tokens.textual_inversion import TokenEmbedding

    hidden = micro_pipe.text_encoder.config.hidden_size
    add_embeddings(micro_pipe, [TokenEmbedding("<c0001>", torch.randn(1, hidden), "a")])
    res = DiscoTrainer(micro_pipe, micro_classifier, _cfg(max_steps=1), run_seed=0, resolution=32).train(1, "dog")
    assert res.status == "ok", res.error
    micro_pipe.tokenizer.add_tokens(["<c0002>"])  # as if the model shipped with it
    with pytest.raises(AugmentError, match="already contains"):
        DiscoTrainer(micro_pipe, micro_classifier, _cfg(max_steps=1), run_seed=0, resolution=32).train(2, "cat")


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
