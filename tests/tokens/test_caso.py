"""CASO embeddings on the micro pipeline: the pipeline is left as it was, multi-vector files load.

The edit they drive is :meth:`Diffusion.edit`, tested in tests/models/test_diffusion.py."""

from __future__ import annotations

import torch

from augment.config import CasoConfig
from augment.tokens.caso import CasoTrainer, vector_tokens
from augment.tokens.textual_inversion import load_tokens, save_token


def _images(n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 32, 32, generator=g)


def test_learn_leaves_the_table_and_saves_multivector(micro_pipe, micro_classifier, micro_pipeline_dir, tmp_path):
    before = micro_pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    cfg = CasoConfig(n_vectors=2, max_steps=3, batch_size=2, lr=0.05)
    trainer = CasoTrainer(micro_pipe, micro_classifier, cfg, run_seed=0)
    res = trainer.learn(_images(), target=2)
    after = micro_pipe.text_encoder.get_input_embeddings().weight
    assert res.token == "<caso0002>" and res.embedding.shape == (2, after.shape[1])
    assert torch.equal(after, before)  # the token's rows existed only while it learned
    assert len(res.history) == 3 and all(r[1] >= 0 for r in res.history)
    again = trainer.learn(_images(), target=2)  # a worker learning it twice starts from the init token
    assert torch.equal(again.embedding, res.embedding)
    path = tmp_path / "caso.safetensors"
    save_token(path, res.token, res.embedding.reshape(2, -1))
    from augment.models.backbone import load_backbone

    fresh = load_backbone(str(micro_pipeline_dir))
    load_tokens(fresh, [path])
    assert all(t in fresh.tokenizer.get_vocab() for t in vector_tokens(res.token, 2))

