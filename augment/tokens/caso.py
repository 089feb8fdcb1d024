"""CASO: classifier-guided semantic embeddings learned from a few real images (IJCAI 2025).

Where DisCo learns a token from generated images, CASO starts from real ones: a real image's latent
is noised to timestep t0, the clean latent is predicted in ONE step (classifier-free guidance under
the learned embedding), decoded and classified; the loss is cross-entropy to the target class plus
a latent reconstruction term that keeps the prediction close to the real image. The embedding (a
few vectors in place of the first tokens of an empty prompt) then *edits* real images: noise to a
strength, denoise under it. Target = the image's own class gives class-preserving variations of
the few-shot reals; another class gives counterfactual edits; a negative guidance scale reverses
the edit (:meth:`augment.models.diffusion.Diffusion.edit`). Embeddings are saved as multi-vector
textual-inversion files (``[n, D]``), which ``pipe.load_textual_inversion`` expands to
``token token_1 ...`` in prompts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from augment.config import CasoConfig
from augment.models.diffusion import Diffusion
from augment.seeds import derive_seed
from augment.tokens.textual_inversion import add_token, single_token_id, vector_tokens
from augment.tokens.training import EmbeddingOverride, freeze_for_training


def caso_token(source: int, target: int) -> str:
    return f"<caso{source:04d}>" if source == target else f"<caso{source:04d}to{target:04d}>"


@dataclass
class CasoResult:
    token: str
    embedding: torch.Tensor  # [n, D] float32, CPU
    history: list[tuple[float, float, float]] = field(default_factory=list)  # (ce, recon, accuracy)
    seconds: float = 0.0
    init_accuracy: float = 0.0
    final_accuracy: float = 0.0


class CasoTrainer:
    def __init__(self, pipe, classifier, cfg: CasoConfig, run_seed: int) -> None:
        self.pipe, self.cfg, self.run_seed = pipe, cfg, run_seed
        self.diffusion = Diffusion(pipe)
        self.device = self.diffusion.device
        self.classifier = freeze_for_training(pipe, classifier)

    def _add_vectors(self, token: str) -> list[int]:
        init_id = single_token_id(self.pipe.tokenizer, self.cfg.init_token)
        vocab = self.pipe.tokenizer.get_vocab()
        return [vocab[t] if t in vocab else add_token(self.pipe, t, init_id) for t in vector_tokens(token, self.cfg.n_vectors)]

    def learn(self, images01: torch.Tensor, source: int, target: int) -> CasoResult:
        """Learn the embedding that moves ``images01`` (real images of class ``source``) to ``target``."""
        cfg, pipe, diffusion = self.cfg, self.pipe, self.diffusion
        start = time.perf_counter()
        token = caso_token(source, target)
        ids = self._add_vectors(token)
        emb_layer = pipe.text_encoder.get_input_embeddings()
        vectors = [torch.nn.Parameter(emb_layer.weight[i].detach().float().clone()) for i in ids]
        hooks = [EmbeddingOverride(emb_layer, i, v) for i, v in zip(ids, vectors, strict=True)]
        opt = torch.optim.AdamW(vectors, lr=cfg.lr, weight_decay=0.0)
        z0_all = diffusion.encode_images(images01.to(self.device))
        t = int(cfg.t0 * (pipe.scheduler.config.num_train_timesteps - 1))
        prompt = " ".join(vector_tokens(token, cfg.n_vectors))
        result = CasoResult(token, torch.empty(0))
        best = (float("inf"), [v.detach().clone() for v in vectors])
        with torch.no_grad():
            uncond_all = diffusion.encode_prompts([""] * cfg.batch_size)
        try:
            for step in range(cfg.max_steps):
                idx = [(step * cfg.batch_size + j) % len(z0_all) for j in range(cfg.batch_size)]
                z0 = z0_all[idx]
                seeds = [derive_seed(self.run_seed, "caso", source, target, step, j) for j in range(len(idx))]
                tt = torch.full((len(idx),), t, device=self.device, dtype=torch.long)
                zt = diffusion.noise_latents(z0, seeds, tt)
                cond = diffusion.encode_prompts([prompt] * len(idx))
                out = diffusion.guided_output(torch.cat([zt, zt]), tt.repeat(2),
                                              torch.cat([uncond_all[: len(idx)], cond]), cfg.guidance_scale)
                x0 = diffusion.predict_x0(zt, out, t)
                logits = self.classifier(diffusion.decode(x0))
                target_t = torch.full((len(idx),), target, device=self.device, dtype=torch.long)
                ce = F.cross_entropy(logits, target_t)
                recon = F.mse_loss(x0, z0)
                loss = ce + cfg.recon_weight * recon
                acc = float((logits.argmax(1) == target_t).float().mean())
                result.history.append((ce.item(), recon.item(), acc))
                if step == 0:
                    result.init_accuracy = acc
                if loss.item() < best[0]:
                    best = (loss.item(), [v.detach().clone() for v in vectors])
                    result.final_accuracy = acc
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(vectors, 1.0)
                opt.step()
        finally:
            for h in hooks:
                h.remove()
        with torch.no_grad():
            for i, v in zip(ids, best[1], strict=True):
                emb_layer.weight[i] = v.to(emb_layer.weight.dtype)
        result.embedding = torch.stack(best[1]).cpu()
        result.seconds = time.perf_counter() - start
        return result
