"""DisCo: learn one discriminative class token per class (Schwartz et al., ICCV 2023).

For class c we add a token ``<cNNNN>`` initialised from a chosen word, generate a batch from the
training prompts with classifier-free guidance (:meth:`augment.models.diffusion.Diffusion.sample_latents`,
the gradient through the last ``grad_steps`` steps), decode, classify, and minimise cross-entropy
to c with respect to that token's input embedding only. The embedding is injected by a forward hook
(:class:`augment.tokens.training.EmbeddingOverride`), so the model's weights are never written to:
every other row and every other parameter stays bit-identical by construction.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from augment.config import TokenConfig
from augment.models.diffusion import Diffusion
from augment.seeds import derive_seed
from augment.tokens.textual_inversion import add_token, added_tokens, single_token_id, token_string
from augment.tokens.training import EmbeddingOverride, freeze_for_training


@dataclass
class TokenResult:
    class_index: int
    class_name: str
    token: str
    init_token: str
    embedding: torch.Tensor | None  # [1, D] float32 on CPU (the best one seen)
    steps: int = 0
    best_loss: float = math.inf
    init_accuracy: float = 0.0
    final_accuracy: float = 0.0
    seconds: float = 0.0
    status: str = "ok"
    error: str | None = None
    seeds: list[int] = field(default_factory=list)
    history: list[tuple[float, float]] = field(default_factory=list)  # (loss, batch accuracy) per step


def choose_init_token(tokenizer, class_name: str, cfg: TokenConfig) -> str:
    """The configured initialiser, else the class name's last word when it is one token, else the fallback."""
    if cfg.init_token:
        single_token_id(tokenizer, cfg.init_token)
        return cfg.init_token
    last = class_name.strip().split()[-1].lower() if class_name.strip() else ""
    if last and len(tokenizer.encode(last, add_special_tokens=False)) == 1:
        return last
    single_token_id(tokenizer, cfg.init_fallback)
    return cfg.init_fallback


class DiscoTrainer:
    """Holds a loaded backbone and classifier and trains tokens one class at a time."""

    def __init__(self, pipe, classifier, cfg: TokenConfig, run_seed: int, resolution: int) -> None:
        self.pipe, self.cfg, self.run_seed, self.resolution = pipe, cfg, run_seed, resolution
        self.diffusion = Diffusion(pipe)
        self.classifier = freeze_for_training(pipe, classifier)
        self.device = self.diffusion.device

    def seeds_for(self, class_index: int, step: int) -> list[int]:
        b = self.cfg.batch_size
        offset = step * b if self.cfg.fresh_seeds else 0
        return [derive_seed(self.run_seed, "tokens", class_index, offset + j) for j in range(b)]

    def prompts_for(self, token: str, name: str) -> list[str]:
        templates = self.cfg.prompts
        return [templates[j % len(templates)].format(token=token, name=name) for j in range(self.cfg.batch_size)]

    def _forward(self, prompts: list[str], seeds: list[int], grad: bool) -> torch.Tensor:
        """Classifier logits of the images the prompts make from these seeds (float32 noise, as trained)."""
        diffusion = self.diffusion
        latents = diffusion.initial_latents(seeds, self.resolution, torch.float32)
        with torch.no_grad():
            uncond = diffusion.encode_prompts([""] * len(prompts))
        with torch.set_grad_enabled(grad):
            cond = diffusion.encode_prompts(prompts)
        latents = diffusion.sample_latents(latents, cond, uncond, self.cfg.steps, self.cfg.guidance_scale,
                                           grad_steps=self.cfg.grad_steps if grad else 0,
                                           checkpointing=self.cfg.checkpointing, seeds=seeds)
        with torch.set_grad_enabled(grad):
            return self.classifier(diffusion.decode(latents))

    def train(self, class_index: int, class_name: str, progress=None) -> TokenResult:
        cfg, pipe = self.cfg, self.pipe
        start = time.perf_counter()
        token = token_string(class_index)
        init = choose_init_token(pipe.tokenizer, class_name, cfg)
        init_id = single_token_id(pipe.tokenizer, init)
        token_id = add_token(pipe, token, init_id, reuse=token in added_tokens(pipe))
        emb_layer = pipe.text_encoder.get_input_embeddings()
        vector = torch.nn.Parameter(emb_layer.weight[init_id].detach().float().clone())
        hook = EmbeddingOverride(emb_layer, token_id, vector)
        opt = torch.optim.AdamW([vector], lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
        target = torch.full((cfg.batch_size,), class_index, device=self.device, dtype=torch.long)
        prompts = self.prompts_for(token, class_name)
        result = TokenResult(class_index, class_name, token, init, None, seeds=self.seeds_for(class_index, 0))
        best_vec, since_best = vector.detach().clone(), 0
        try:
            for step in range(cfg.max_steps):
                seeds = self.seeds_for(class_index, step)
                logits = self._forward(prompts, seeds, grad=True)
                loss = F.cross_entropy(logits, target)
                loss_value = loss.item()
                acc = float((logits.argmax(1) == target).float().mean())
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss_value} at step {step}")
                result.history.append((loss_value, acc))
                if step == 0:
                    result.init_accuracy = acc
                if loss_value < result.best_loss:
                    result.best_loss, best_vec, since_best = loss_value, vector.detach().clone(), 0
                    result.final_accuracy = acc
                else:
                    since_best += 1
                result.steps = step + 1
                if progress is not None:
                    progress(step, loss_value, acc)
                if acc > cfg.acc_threshold:  # this embedding (before the update) is good enough
                    best_vec, result.best_loss, result.final_accuracy = vector.detach().clone(), loss_value, acc
                    break
                if since_best >= cfg.patience:
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([vector], cfg.grad_clip)  # after backward, where it acts
                opt.step()
        except (FloatingPointError, RuntimeError) as e:
            result.status, result.error = "failed", f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        finally:
            hook.remove()
        result.embedding = best_vec.reshape(1, -1).cpu()
        with torch.no_grad():  # leave the learned vector in the table so later prompts in this process use it
            emb_layer.weight[token_id] = best_vec.to(emb_layer.weight.dtype)
        result.seconds = time.perf_counter() - start
        return result
