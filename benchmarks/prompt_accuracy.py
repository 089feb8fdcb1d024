"""Which words reach which digit: judge accuracy per class of plain prompts on the embedded default.

A class token can only help where the model can draw the class under *some* conditioning. This
script measures that for prompt templates without any learned token: for each template and class
it generates ``--per-class`` images (DDIM, the digits preset's generation steps and guidance, one
seed per image, the same seeds for every template) and reports the share the independent judge
(and the guide) call the intended class. ``{name}`` is the class name, ``{shape}`` the shape word
the embedded model's captions use for that digit (never swapped, see
``augment/models/embedded/captions.py``).

    python benchmarks/prompt_accuracy.py --per-class 50 \
        --template "a photo of the digit {name}" --template "a digit shaped like a {shape}"

docs/embedded.md ("The model") quotes this script's output for the two templates above.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--template", action="append", default=None,
                    help="prompt template with {name} and/or {shape}; repeatable")
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1000, help="image i of every class uses seed + i")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    templates = args.template or ["a photo of the digit {name}", "a digit shaped like a {shape}"]

    import torch

    from augment.config import resolve_config
    from augment.datasets.digits import DIGIT_NAMES
    from augment.models.backbone import load_backbone
    from augment.models.classifier import load_classifier
    from augment.models.diffusion import Diffusion
    from augment.models.embedded.captions import SHAPE_WORDS

    torch.set_num_threads(args.threads)
    cfg = resolve_config(dataset="digits")
    pipe = load_backbone(cfg.model, "cpu", "float32", cfg.scheduler)
    diffusion = Diffusion(pipe)
    guide, judge = load_classifier(cfg.classifier), load_classifier(cfg.judge)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    seeds = [args.seed + i for i in range(args.per_class)]
    for template in templates:
        start = time.perf_counter()
        per_class = {}
        for c, name in enumerate(DIGIT_NAMES):
            prompt = template.format(name=name, shape=SHAPE_WORDS[c])
            with torch.no_grad():
                latents = diffusion.initial_latents(seeds, size, torch.float32)
                cond = diffusion.encode_prompts([prompt] * len(seeds))
                uncond = diffusion.encode_prompts([cfg.generate.negative_prompt] * len(seeds))
                latents = diffusion.sample_latents(latents, cond, uncond, cfg.generate.steps,
                                                   cfg.generate.guidance_scale, seeds=seeds)
                images = diffusion.decode(latents)
                per_class[name] = (float((judge(images).argmax(1) == c).float().mean()),
                                   float((guide(images).argmax(1) == c).float().mean()))
        judge_mean = sum(j for j, _ in per_class.values()) / len(DIGIT_NAMES)
        guide_mean = sum(g for _, g in per_class.values()) / len(DIGIT_NAMES)
        print(f"{template!r}: judge {100 * judge_mean:.1f}% (guide {100 * guide_mean:.1f}%), "
              f"{time.perf_counter() - start:.0f}s")
        print("  " + "  ".join(f"{n} {100 * j:.0f}" for n, (j, _) in per_class.items()), flush=True)


if __name__ == "__main__":
    main()
