"""Downstream use of a synthetic set: few-shot mixing, classifier training, evaluation, reports.

    mixing.py      few-shot reals + synthetic shard sets -> MixedDataset / mixed_loader / stream_mixed
    transforms.py  batched small-image augmentation (shift, rotation, scale, optional flip)
    train.py       train a timm classifier on a mix, test on a real split, save metrics + checkpoint
    metrics.py     top-1/top-5, per-class accuracy, confusion matrix, FID/KID on classifier features
    evaluate.py    `augment eval`: accuracy of generated images per arm and classifier (Table 1)
    benchmark.py   `augment benchmark`: k-shot x arms x seeds grid (Table 2)
"""
