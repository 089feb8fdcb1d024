"""Half precision the way diffusers runs it (issue 19): the images token training and validation
score are the images generation makes from the same seeds, pixel for pixel, in bfloat16 too.

With autocast over bf16 weights (the code before) the two differed by up to 11 levels of 255 on
the embedded model, so a token was kept for images that were not the ones in the shards.
"""

from __future__ import annotations

import pytest
import torch

from augment.config import GenerateConfig, TokenConfig
from augment.models.diffusion import Diffusion
from augment.tokens.disco import DiscoTrainer
from augment.tokens.textual_inversion import installed_tokens


@pytest.fixture(scope="module")
def bf16_pipe():
    """The shipped tiny model with its weights held in bfloat16 on the CPU (``resolve_dtype`` keeps
    CPU runs in float32; the cast stands for a CUDA card's bf16 load)."""
    from augment.models.backbone import load_backbone

    pipe = load_backbone("embedded:tiny-digits", "cpu")
    return pipe.to(dtype=torch.bfloat16)


class _Recording(torch.nn.Module):
    """A classifier that keeps every batch of images it is shown (and gives logits that depend on
    them, so a gradient flows)."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, classes)
        self.seen: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.detach().clone())
        return self.head(images.mean((2, 3)))


def _pixels(images: torch.Tensor) -> torch.Tensor:
    """As the generate worker stores them: uint8 levels."""
    return (images * 255).round().to(torch.uint8)


def test_bf16_training_and_validation_images_are_the_generated_ones(bf16_pipe):
    pipe = bf16_pipe
    assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.bfloat16
    gen = GenerateConfig(steps=3, guidance_scale=5.0)
    cfg = TokenConfig(batch_size=2, steps=3, guidance_scale=4.0, max_steps=1, val_seeds=3, val_every=5,
                      patience=5, acc_threshold=1.1, grad_steps="all", checkpointing=True)
    res = pipe.unet.config.sample_size * pipe.vae_scale_factor
    trainer = DiscoTrainer(pipe, torch.nn.Linear(1, 1), cfg, run_seed=7, resolution=res, generation=gen)
    recorder = trainer.classifier = _Recording(10)
    result = trainer.train(3, "three")
    assert result.status == "ok", result.error
    assert trainer.classifier.head.weight.dtype == torch.float32  # the classifier stays float32
    # shown: the first validation (3 images), the one training step (2), the last validation (3)
    assert [len(x) for x in recorder.seen] == [3, 2, 3]
    assert all(x.dtype == torch.float32 for x in recorder.seen)

    # generation's images with the initialiser's vector as the token (what step 0 trained and validated)
    d = Diffusion(pipe)
    init_id = pipe.tokenizer.convert_tokens_to_ids(f"{result.init_token}</w>")
    init = pipe.text_encoder.get_input_embeddings().weight[init_id].detach().float().reshape(1, -1)
    with installed_tokens(pipe, {result.token: init}):
        val_prompts = trainer._prompts(gen.prompts, result.token, "three", cfg.val_seeds)
        validation = d.generate(val_prompts, trainer.validation_seeds(3), gen.steps, gen.guidance_scale,
                                result.negative_prompt, res)
        training = d.generate(trainer.prompts_for(result.token, "three"), trainer.seeds_for(3, 0), cfg.steps,
                              cfg.guidance_scale, result.negative_prompt, res)
    assert torch.equal(_pixels(recorder.seen[0]), _pixels(validation))
    assert torch.equal(_pixels(recorder.seen[1]), _pixels(training))
    assert torch.equal(recorder.seen[0], validation)  # not only after rounding: the same floats
