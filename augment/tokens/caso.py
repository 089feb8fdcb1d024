"""CASO: classifier-guided semantic embeddings learned from a few real images (IJCAI 2025).

Where DisCo learns a token from generated images, CASO starts from real ones. As in the official
code (Chang-yuanyuan/CASO, ``trainer.train``), one embedding per TARGET class is learned from a
batch of real images of ANY class (here: the k-shot reals of all classes): each real latent is
noised to timestep t0 by the forward process, the clean latent is predicted in ONE step under
classifier-free guidance with the embedding in place of the first token of the empty prompt,
decoded and classified; the loss pushes the classifier towards the target (cross-entropy here; the
official binary attribute classifier uses a squared error), plus ``recon_weight`` times a latent
reconstruction term (0 in the official code). Learning from the target class's own images only
would make the cross-entropy about 0 from the first step: nothing would be learned but the
reconstruction.

The embeddings then edit real images (:meth:`augment.models.diffusion.Diffusion.edit`): DDIM
inversion to a strength and guided denoising (the paper's Eq. 6-7), or SDEdit; several embeddings
can share one condition (multi-attribute edits); a negative guidance scale reverses an edit.
:func:`edit_conditions` reads which embeddings edit which reals. Embeddings are saved as
(multi-vector) textual-inversion files (``[n, D]``), which ``pipe.load_textual_inversion`` expands
to ``token token_1 ...`` in prompts; an edit installs them for its own block
(:func:`augment.tokens.textual_inversion.installed_tokens`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from augment.config import CasoConfig
from augment.errors import AugmentError
from augment.models.diffusion import Diffusion
from augment.seeds import derive_seed
from augment.tokens.textual_inversion import installed_tokens, single_token_id, vector_tokens
from augment.tokens.training import EmbeddingOverride, freeze_for_training, loss_scaler, optimiser_step


def caso_token(target: int) -> str:
    """The token of the embedding that edits towards class ``target``."""
    return f"<caso{target:04d}>"


def condition_prompt(targets: tuple[int, ...], n_vectors: int) -> str:
    """The prompt of an edit condition: the targets' embeddings concatenated (multi-attribute edit)."""
    return " ".join(t for c in targets for t in vector_tokens(caso_token(c), n_vectors))


def _class(text: str, n_classes: int, spec: str) -> int:
    try:
        c = int(text)
    except ValueError:
        c = -1
    if not 0 <= c < n_classes:
        raise AugmentError(f"caso.target {spec!r}: {text.strip()!r} is not a class index 0-{n_classes - 1}; "
                           "use self, all, B, A->B or A->B+C")
    return c


def edit_conditions(spec: str, source: int, classes: list[int], n_classes: int) -> list[tuple[int, ...]]:
    """The conditions (tuples of target classes, concatenated) the reals of class ``source`` are
    edited under, for the ``caso.target`` spec: ``self``, ``all`` (every class in ``classes``),
    ``B[+C...]`` (every source) or ``A->B[+C...]`` (source A only). AugmentError on a bad spec."""
    spec = str(spec).strip()
    if spec == "self":
        return [(source,)]
    if spec == "all":
        return [(c,) for c in classes]
    src, arrow, rest = spec.partition("->")
    if arrow and _class(src, n_classes, spec) != source:
        return []
    targets = tuple(_class(t, n_classes, spec) for t in (rest if arrow else spec).split("+"))
    return [targets]


def edit_label(source: int, targets: tuple[int, ...], guidance: float) -> int:
    """An edit's label: its first target (a counterfactual a->b is labelled b); a reverse edit
    (negative guidance) pushes away from the targets, so it keeps the source's label."""
    return source if guidance < 0 else targets[0]


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

    def learn(self, images01: torch.Tensor, target: int) -> CasoResult:
        """Learn the embedding that moves ``images01`` (real images of any class) to ``target``.

        Batches of ``batch_size`` go through the reals in a seeded shuffled order, epoch after
        epoch (the official code's shuffled DataLoader); the embedding after the last step is kept,
        as the official code saves it at the end of an epoch.
        """
        cfg, pipe, diffusion = self.cfg, self.pipe, self.diffusion
        start = time.perf_counter()
        token = caso_token(target)
        init = pipe.text_encoder.get_input_embeddings().weight[single_token_id(pipe.tokenizer, cfg.init_token)]
        init = init.detach().float()
        # the token's rows exist only while it learns (the pipeline may be shared with later stages);
        # it always starts from the init token
        with installed_tokens(pipe, {token: init.reshape(1, -1).repeat(cfg.n_vectors, 1)}):
            ids = pipe.tokenizer.convert_tokens_to_ids(vector_tokens(token, cfg.n_vectors))
            emb_layer = pipe.text_encoder.get_input_embeddings()
            vectors = [torch.nn.Parameter(init.clone()) for _ in ids]
            hooks = [EmbeddingOverride(emb_layer, i, v) for i, v in zip(ids, vectors, strict=True)]
            opt = torch.optim.AdamW(vectors, lr=cfg.lr, weight_decay=cfg.weight_decay)
            scaler = loss_scaler(pipe)
            z0_all = diffusion.encode_images(images01.to(self.device))
            t = int(cfg.t0 * (pipe.scheduler.config.num_train_timesteps - 1))
            prompt = " ".join(vector_tokens(token, cfg.n_vectors))
            result = CasoResult(token, torch.empty(0))
            n = len(z0_all)
            order: list[int] = []
            with torch.no_grad():
                uncond_all = diffusion.encode_prompts([""] * cfg.batch_size)
            try:
                for step in range(cfg.max_steps):
                    while len(order) < cfg.batch_size:  # the next epoch's shuffle, seeded
                        g = torch.Generator().manual_seed(derive_seed(self.run_seed, "caso-order", target, step))
                        order += torch.randperm(n, generator=g).tolist()
                    idx, order = order[: cfg.batch_size], order[cfg.batch_size:]
                    z0 = z0_all[idx]
                    seeds = [derive_seed(self.run_seed, "caso", target, step, j) for j in range(len(idx))]
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
                    opt.zero_grad(set_to_none=True)
                    optimiser_step(scaler, opt, loss, vectors, 1.0)  # loss scaling in float16
            finally:
                for h in hooks:
                    h.remove()
        accs = [h[2] for h in result.history]
        w = max(1, min(5, len(accs) // 2))  # one-step accuracy on the reals: first vs last few batches
        result.init_accuracy, result.final_accuracy = sum(accs[:w]) / w, sum(accs[-w:]) / w
        result.embedding = torch.stack([v.detach().clone() for v in vectors]).cpu()
        result.seconds = time.perf_counter() - start
        return result
