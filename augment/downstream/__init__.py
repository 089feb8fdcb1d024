"""Downstream use of a synthetic set: few-shot mixing, classifier training, evaluation, reports.

    mixing.py            few-shot reals + synthetic shard sets -> MixedDataset / mixed_loader / stream_mixed
    transforms.py        batched small-image augmentation (shift, rotation, scale, optional flip)
    train.py             train a timm classifier on a mix, test on a real split, save metrics + checkpoint
    metrics.py           top-1/top-5, per-class accuracy, confusion matrix, FID/KID on classifier features
    evaluate.py          `augment eval`: accuracy of generated images per arm and classifier (Table 1)
    eval_result.py       EvalResult: what evaluate writes to eval.json and reports read back
    benchmark.py         `augment benchmark`: k-shot x treatments x seeds grid (Table 2), cached per cell
    benchmark_result.py  Treatment, BenchmarkCell, SummaryRow, BenchmarkResult: the grid's data and benchmark.json
    benchmark_report.py  the grid's table, markdown, CSV and plot
    arms.py              which synthetic arms a run folder lacks for a grid (augment.pipeline builds them)

Results cross module and process boundaries as the dataclasses of eval_result.py and
benchmark_result.py (``to_json`` / ``from_json``), never as dicts whose keys a reader must guess.
"""
