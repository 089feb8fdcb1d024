"""CASO edits on the embedded default: edit success vs preservation, ddim vs sdedit vs a plain prompt.

Learns the 10 digit embeddings as ``augment caso`` does (from the k-shot reals of all classes,
the digits preset's ``caso`` settings), then edits every one of those reals towards every OTHER
class (counterfactual a->b) at each strength, three ways:

    ddim     the paper's edit: DDIM inversion to the strength, then guided denoising (CASO embedding)
    sdedit   noise to the strength with a fresh seed, then guided denoising (CASO embedding)
    prompt   SDEdit under the plain class prompt ("A photo of a {name}"), no learned embedding

and reports, per (mode, strength): edit success (the independent judge, and the guide that trained
the embeddings, predict b), preservation (mean L2 distance between source and edit in the judge's
penultimate features, and RMS pixel difference on the 0-255 scale). The reference row ``none``
is the unedited reals (success = the judge already calling a real of a its target b). All modes use
the same guidance scale and steps (``caso.edit_guidance``, ``caso.edit_steps``).

    python benchmarks/caso_edits.py --k 3 --strengths 0.3,0.5,0.7 --json /tmp/caso_edits.json

The figures quoted in docs/results.md (CASO section) come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=3, help="reals per class (learned from, and edited)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the k-shot draw")
    ap.add_argument("--strengths", default="0.3,0.5,0.7")
    ap.add_argument("--modes", default="ddim,sdedit,prompt")
    ap.add_argument("--max-steps", type=int, default=None, help="override caso.max_steps")
    ap.add_argument("--guidance", type=float, default=None, help="override caso.edit_guidance")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: fastest on shared cores)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import numpy as np
    import torch

    from augment.config import resolve_config
    from augment.downstream.metrics import penultimate_features
    from augment.models.backbone import load_backbone
    from augment.models.classifier import load_classifier
    from augment.models.diffusion import Diffusion
    from augment.models.labels import load_dataset
    from augment.tokens.caso import CasoTrainer, condition_prompt
    from augment.tokens.textual_inversion import installed_tokens

    cfg = resolve_config(dataset="digits")
    cc = cfg.caso
    if args.max_steps:
        cc.max_steps = args.max_steps
    if args.guidance is not None:
        cc.edit_guidance = args.guidance
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    dataset = load_dataset(cfg)
    names = dataset.class_names
    pipe = load_backbone(cfg.model, "cpu", "float32", cfg.scheduler)
    guide, judge = load_classifier(cfg.classifier), load_classifier(cfg.judge)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    kshot = dataset.kshot(args.k, args.seed, cc.split)
    reals = torch.stack([torch.from_numpy(np.array(dataset.load_image(s).convert("RGB").resize((size, size))))
                         .permute(2, 0, 1) for s in kshot]).float() / 255
    labels = torch.tensor([s.label for s in kshot])

    trainer = CasoTrainer(pipe, guide, cc, cfg.seed)
    t0 = time.perf_counter()
    learned = {}
    for b in range(len(names)):
        learned[b] = trainer.learn(reals, b)
        print(f"  embedding {b}: {learned[b].seconds:.0f}s", flush=True)
    learn_s = time.perf_counter() - t0
    print(f"learned {len(learned)} embeddings from {len(reals)} reals ({cc.max_steps} steps each) in {learn_s:.0f}s; "
          "one-step guide accuracy on the reals, first -> last batches: "
          + ", ".join(f"{b}: {r.init_accuracy:.2f}->{r.final_accuracy:.2f}" for b, r in learned.items()))

    diffusion = Diffusion(pipe)
    template = cfg.generate.prompts[0].replace("{token} ", "").replace("{token}", "")

    @torch.no_grad()
    def judge_all(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return judge(images).argmax(1), guide(images).argmax(1), penultimate_features(judge, images)

    src_feats = penultimate_features(judge, reals)
    rows = []
    for strength in [None] + [float(s) for s in args.strengths.split(",")]:
        for mode in (["none"] if strength is None else args.modes.split(",")):
            start = time.perf_counter()
            ok_j = ok_g = n = 0
            fdist, pdist = [], []
            for b in range(len(names)):
                idx = (labels != b).nonzero().flatten()
                src = reals[idx]
                seeds = [cfg.seed * 100003 + b * 1009 + int(i) for i in idx]
                if mode == "none":
                    out = src
                elif mode == "prompt":
                    out = diffusion.edit(template.format(name=names[b]), src, seeds, strength, cc.edit_steps,
                                         cc.edit_guidance, mode="sdedit")
                else:
                    with installed_tokens(pipe, {learned[b].token: learned[b].embedding}):
                        out = diffusion.edit(condition_prompt((b,), cc.n_vectors), src, seeds, strength,
                                             cc.edit_steps, cc.edit_guidance, mode=mode)
                pj, pg, feats = judge_all(out)
                ok_j += int((pj == b).sum())
                ok_g += int((pg == b).sum())
                n += len(idx)
                fdist.append((feats - src_feats[idx]).norm(dim=1))
                pdist.append(((out - src) * 255).pow(2).mean(dim=(1, 2, 3)).sqrt())
            row = {"mode": mode, "strength": strength, "edits": n, "judge_success": ok_j / n,
                   "guide_success": ok_g / n, "judge_feature_l2": float(torch.cat(fdist).mean()),
                   "pixel_rms": float(torch.cat(pdist).mean()), "seconds": round(time.perf_counter() - start, 1)}
            rows.append(row)
            print(f"{mode:7s} strength {'-' if strength is None else f'{strength:.1f}':>4s}: judge success "
                  f"{100 * row['judge_success']:5.1f}%  guide {100 * row['guide_success']:5.1f}%  judge-feature L2 "
                  f"{row['judge_feature_l2']:6.2f}  pixel RMS {row['pixel_rms']:5.1f}  ({n} edits, {row['seconds']}s)",
                  flush=True)
    # the scale of the feature distance: reals of different classes
    diff = (labels[:, None] != labels[None, :])
    ref = torch.cdist(src_feats, src_feats)[diff].mean()
    print(f"reference: judge-feature L2 between reals of different classes {float(ref):.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"k": args.k, "seed": args.seed, "caso": vars(cc), "learn_seconds": learn_s,
                       "learned": {b: [r.init_accuracy, r.final_accuracy] for b, r in learned.items()},
                       "reference_feature_l2": float(ref), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
