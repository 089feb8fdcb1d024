"""DisCo: learn one discriminative class token per class (Schwartz et al., ICCV 2023).

For class c we add a token ``<cNNNN>`` (``n_vectors`` of them for a multi-vector token) initialised
from a chosen word, generate a batch from the training prompts with classifier-free guidance
(:meth:`augment.models.diffusion.Diffusion.sample_latents`, the gradient through the last
``grad_steps`` steps), decode with a straight-through clamp, classify, and minimise cross-entropy
to c with respect to that token's input embedding only. The embedding is injected by a forward hook
(:class:`augment.tokens.training.EmbeddingOverride`), so the model's weights are never written to:
every other row and every other parameter stays bit-identical by construction.

Which vector is kept is decided on a fixed validation set, not on the training batches: one
8-image batch's accuracy has a spread of about ±0.16 at a true accuracy of 0.3, so choosing (and
stopping) on the lowest batch loss keeps whichever vector met a lucky batch. Every ``val_every``
steps the current vector makes ``val_seeds`` images with the generation settings (prompts, sampler
steps, guidance, negative prompt), no gradient; the best by validation accuracy (ties: lower loss)
is kept, the initialiser included, so a token never scores below its starting word on validation.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from augment.config import GenerateConfig, TokenConfig
from augment.models.diffusion import Diffusion
from augment.models.memory import is_out_of_memory
from augment.prompts import render_prompt
from augment.seeds import derive_seed
from augment.tokens.textual_inversion import installed_tokens, single_token_id, token_string, vector_tokens
from augment.tokens.training import EmbeddingOverride, freeze_for_training, loss_scaler, optimiser_step


@dataclass
class Validation:
    """One validation score: the vector after ``step`` optimisation steps (0 = the initialiser)."""

    step: int
    accuracy: float
    loss: float

    def beats(self, other: Validation | None) -> bool:
        """Higher accuracy wins; at equal accuracy the lower loss."""
        return other is None or (self.accuracy, -self.loss) > (other.accuracy, -other.loss)


@dataclass
class TokenResult:
    class_index: int
    class_name: str
    token: str
    init_token: str
    embedding: torch.Tensor | None  # [n_vectors, D] float32 on CPU (the kept one)
    steps: int = 0
    best_loss: float = math.inf  # the kept vector's validation loss
    init_accuracy: float = 0.0  # training-batch accuracy of the first step (the initialiser)
    final_accuracy: float = 0.0  # training-batch accuracy of the kept vector (its own step's batch)
    init_val_accuracy: float | None = None
    final_val_accuracy: float | None = None
    best_step: int = 0  # optimisation steps behind the kept vector (0: the initialiser was kept)
    negative_prompt: str = ""  # what training and validation used (generation uses the same)
    seconds: float = 0.0
    status: str = "ok"
    error: str | None = None
    seeds: list[int] = field(default_factory=list)
    history: list[tuple[float, float]] = field(default_factory=list)  # (loss, batch accuracy) per step
    lrs: list[float] = field(default_factory=list)  # learning rate of each step
    validations: list[Validation] = field(default_factory=list)

    def history_json(self) -> dict[str, Any]:
        """The per-step and per-validation record the tokens stage writes next to the token."""
        return {
            "class_index": self.class_index, "class_name": self.class_name, "token": self.token,
            "init_token": self.init_token, "negative_prompt": self.negative_prompt, "best_step": self.best_step,
            "status": self.status, "error": self.error, "seconds": round(self.seconds, 3),
            "steps": [{"step": i + 1, "loss": round(loss, 6), "accuracy": round(acc, 6), "lr": lr}
                      for i, ((loss, acc), lr) in enumerate(zip(self.history, self.lrs, strict=False))],
            "validations": [{k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(val).items()}
                            for val in self.validations],
        }


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


def check_initialisers(backbone: str, class_names: list[str], classes: list[int], cfg: TokenConfig) -> None:
    """Every selected class's initialiser word checked on the driver, with the tokenizer alone
    (``backbone``: the resolved pipeline folder, its ``tokenizer/`` subfolder), so that a word the
    tokenizer splits is one line before ``run.json`` is written, not an error on a worker after its
    model loaded, minutes into a cluster run. The worker's own check (:meth:`DiscoTrainer.train`)
    stays: it holds the tokenizer that trains. A folder without a tokenizer is left to the worker."""
    from transformers import CLIPTokenizer

    folder = Path(backbone) / "tokenizer"
    if not folder.is_dir():
        return
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    for c in classes:
        choose_init_token(tokenizer, class_names[c], cfg)


def learning_rate(cfg: TokenConfig, init: torch.Tensor, step: int) -> float:
    """Adam's learning rate at ``step``: ``lr``, or ``step_size`` relative to the initialiser's
    scale (Adam moves each element by about lr, so the L2 step is about lr * sqrt(D)), times the
    schedule."""
    base = cfg.lr if cfg.step_size is None else cfg.step_size * float(init.norm(dim=-1).mean()) / math.sqrt(init.shape[-1])
    if cfg.lr_schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * step / cfg.max_steps))
    return base


def project_to_trust_region(vector: torch.Tensor, init: torch.Tensor, radius: float | None) -> None:
    """Pull each row of ``vector`` back to within ``radius`` x its initialiser's norm of the initialiser."""
    if radius is None:
        return
    with torch.no_grad():
        delta = vector - init
        limit = radius * init.norm(dim=-1, keepdim=True)
        scale = (limit / delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
        vector.copy_(init + delta * scale)


class DiscoTrainer:
    """Holds a loaded backbone and classifier and trains tokens one class at a time.

    ``generation``: the settings the tokens will be used with (prompts, sampler steps, guidance,
    negative prompt); validation always uses them, training too unless ``tokens.steps`` /
    ``tokens.guidance_scale`` say otherwise. ``class_names`` name the confused classes in a
    per-class negative prompt (``negative_confusers``).
    """

    def __init__(self, pipe, classifier, cfg: TokenConfig, run_seed: int, resolution: int,
                 generation: GenerateConfig | None = None, class_names: list[str] | None = None) -> None:
        self.pipe, self.cfg, self.run_seed, self.resolution = pipe, cfg, run_seed, resolution
        self.generation = generation or GenerateConfig()
        self.class_names = class_names
        self.diffusion = Diffusion(pipe)
        self.classifier = freeze_for_training(pipe, classifier)
        self.device = self.diffusion.device

    @property
    def train_steps(self) -> int:
        return self.cfg.steps or self.generation.steps

    @property
    def train_guidance(self) -> float:
        return self.cfg.guidance_scale if self.cfg.guidance_scale is not None else self.generation.guidance_scale

    def seeds_for(self, class_index: int, step: int) -> list[int]:
        b = self.cfg.batch_size
        offset = step * b if self.cfg.fresh_seeds else 0
        return [derive_seed(self.run_seed, "tokens", class_index, offset + j) for j in range(b)]

    def validation_seeds(self, class_index: int) -> list[int]:
        """Fixed per class; the stage name keeps them apart from training and generation seeds."""
        return [derive_seed(self.run_seed, "tokens-val", class_index, j) for j in range(self.cfg.val_seeds)]

    def _prompts(self, templates: list[str], token: str, name: str, n: int) -> list[str]:
        words = " ".join(vector_tokens(token, self.cfg.n_vectors))
        return [render_prompt(templates[j % len(templates)], words, name) for j in range(n)]

    def prompts_for(self, token: str, name: str) -> list[str]:
        return self._prompts(self.cfg.prompts, token, name, self.cfg.batch_size)

    def _forward(self, prompts: list[str], seeds: list[int], grad: bool, negative: str = "",
                 steps: int | None = None, guidance: float | None = None) -> torch.Tensor:
        """Classifier logits of the images the prompts make from these seeds (float32 noise, as trained)."""
        diffusion = self.diffusion
        latents = diffusion.initial_latents(seeds, self.resolution, torch.float32)
        with torch.no_grad():
            uncond = diffusion.encode_prompts([negative] * len(prompts))
        with torch.set_grad_enabled(grad):
            cond = diffusion.encode_prompts(prompts)
        latents = diffusion.sample_latents(latents, cond, uncond, steps or self.train_steps,
                                           self.train_guidance if guidance is None else guidance,
                                           grad_steps=self.cfg.grad_steps if grad else 0,
                                           checkpointing=self.cfg.checkpointing, seeds=seeds)
        with torch.set_grad_enabled(grad):
            return self.classifier(diffusion.decode(latents, straight_through=grad, checkpointing=self.cfg.checkpointing))

    @torch.no_grad()
    def _validation_logits(self, class_index: int, token: str, name: str, negative: str) -> torch.Tensor:
        """Guide logits of the validation images, made with the generation settings, in batches."""
        g, seeds = self.generation, self.validation_seeds(class_index)
        prompts = self._prompts(g.prompts, token, name, len(seeds))
        chunk = max(self.cfg.batch_size, 16)
        return torch.cat([self._forward(prompts[i:i + chunk], seeds[i:i + chunk], False, negative,
                                        g.steps, g.guidance_scale) for i in range(0, len(seeds), chunk)])

    def _score(self, logits: torch.Tensor, class_index: int, step: int) -> Validation:
        target = torch.full((len(logits),), class_index, device=logits.device, dtype=torch.long)
        return Validation(step, float((logits.argmax(1) == target).float().mean()), float(F.cross_entropy(logits, target)))

    def negative_prompt(self, logits: torch.Tensor, class_index: int) -> str:
        """The generation negative prompt, plus (``negative_confusers``) the classes the guide most
        often mistakes the initialiser's validation images for, each in the first generation prompt
        without a token ("a photo of the digit nine")."""
        base, k = self.generation.negative_prompt, self.cfg.negative_confusers
        if k == 0 or not self.class_names:
            return base
        counts = torch.bincount(logits.argmax(1).cpu(), minlength=len(self.class_names))
        counts[class_index] = 0
        order = [int(i) for i in counts.argsort(descending=True, stable=True) if counts[i] > 0][:k]
        template = self.generation.prompts[0]
        parts = [base] if base else []
        parts += [render_prompt(template, "", self.class_names[i]) for i in order]
        return ", ".join(parts)

    def train(self, class_index: int, class_name: str, progress=None) -> TokenResult:
        cfg, pipe = self.cfg, self.pipe
        start = time.perf_counter()
        token = token_string(class_index)
        init = choose_init_token(pipe.tokenizer, class_name, cfg)
        init_id = single_token_id(pipe.tokenizer, init)
        init_vec = pipe.text_encoder.get_input_embeddings().weight[init_id].detach().float()
        init_vec = init_vec.reshape(1, -1).repeat(cfg.n_vectors, 1)
        # the token's rows exist only while it trains: the pipeline may be the host's, shared with later stages
        with installed_tokens(pipe, {token: init_vec}):
            ids = pipe.tokenizer.convert_tokens_to_ids(vector_tokens(token, cfg.n_vectors))
            emb_layer = pipe.text_encoder.get_input_embeddings()
            vectors = [torch.nn.Parameter(row.clone()) for row in init_vec]
            hooks = [EmbeddingOverride(emb_layer, i, v) for i, v in zip(ids, vectors, strict=True)]
            opt = torch.optim.AdamW(vectors, lr=learning_rate(cfg, init_vec, 0), betas=(0.9, 0.999),
                                    weight_decay=cfg.weight_decay)
            scaler = loss_scaler(pipe)
            target = torch.full((cfg.batch_size,), class_index, device=self.device, dtype=torch.long)
            prompts = self.prompts_for(token, class_name)
            result = TokenResult(class_index, class_name, token, init, None, seeds=self.seeds_for(class_index, 0))
            best_vec, best, since_best = init_vec.clone(), None, 0
            try:
                logits = self._validation_logits(class_index, token, class_name, self.generation.negative_prompt)
                result.negative_prompt = negative = self.negative_prompt(logits, class_index)
                if negative != self.generation.negative_prompt:
                    logits = self._validation_logits(class_index, token, class_name, negative)
                best = self._score(logits, class_index, 0)
                result.validations.append(best)
                result.init_val_accuracy = best.accuracy
                for step in range(cfg.max_steps):
                    if best.accuracy > cfg.acc_threshold or since_best >= cfg.patience:
                        break
                    lr = learning_rate(cfg, init_vec, step)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    logits = self._forward(prompts, self.seeds_for(class_index, step), True, negative)
                    loss = F.cross_entropy(logits, target)
                    loss_value = loss.item()
                    if not math.isfinite(loss_value):
                        raise FloatingPointError(f"loss became {loss_value} at step {step}")
                    acc = float((logits.argmax(1) == target).float().mean())
                    result.history.append((loss_value, acc))
                    result.lrs.append(lr)
                    if progress is not None:
                        progress(step, loss_value, acc)
                    opt.zero_grad(set_to_none=True)
                    optimiser_step(scaler, opt, loss, vectors, cfg.grad_clip)  # loss scaling in float16
                    for v, v0 in zip(vectors, init_vec, strict=True):
                        project_to_trust_region(v, v0, cfg.trust_radius)
                    result.steps = step + 1
                    if result.steps % cfg.val_every == 0 or result.steps == cfg.max_steps:
                        score = self._score(self._validation_logits(class_index, token, class_name, negative),
                                            class_index, result.steps)
                        result.validations.append(score)
                        if score.beats(best):
                            best, best_vec, since_best = score, torch.stack([v.detach() for v in vectors]), 0
                        else:
                            since_best += 1
            except (FloatingPointError, RuntimeError) as e:
                if is_out_of_memory(e):  # not this class's failure: the stage stops naming what to lower
                    raise
                result.status, result.error = "failed", f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            finally:
                for hook in hooks:
                    hook.remove()
        if result.history:
            result.init_accuracy = result.history[0][1]
            result.final_accuracy = result.history[min(best.step if best else 0, len(result.history) - 1)][1]
        if best is not None:
            result.best_step, result.best_loss, result.final_val_accuracy = best.step, best.loss, best.accuracy
        result.embedding = best_vec.cpu()
        result.seconds = time.perf_counter() - start
        return result
