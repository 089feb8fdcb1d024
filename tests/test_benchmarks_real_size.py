"""benchmarks/real_size.py: its rows, its memory/time model, and a quick run of its whole code path.

The figures themselves come from running the script (benchmarks/README.md); a test never times
anything. These tests check that the path the figures are measured on (copied configs -> pipeline
in memory -> ``DiscoTrainer.train`` / ``Diffusion.generate`` in child processes -> JSON) still runs
and reports every row, on shrunken architectures so it takes seconds.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "real_size.py"


def _script():
    """The script as a module (dataclasses need it registered in sys.modules while it executes)."""
    name = "benchmarks_real_size"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_copied_configs_are_the_full_size_architectures():
    """The repository carries the configs (no file outside it is read) and they are the real sizes."""
    rs = _script()
    for model, cross in (("sd15", 768), ("sd21-base", 1024)):
        cfgs = rs.load_configs(model, tiny=False)
        assert cfgs["unet"]["block_out_channels"] == [320, 640, 1280, 1280]
        assert cfgs["unet"]["cross_attention_dim"] == cross == cfgs["text_encoder"]["hidden_size"]
        assert cfgs["text_encoder"]["vocab_size"] == 49408
        assert cfgs["vae"]["block_out_channels"] == [128, 256, 512, 512]


def test_token_rows_parse_depth_variant_and_steps():
    rs = _script()
    specs = rs.parse_token_rows("1,5,all,1:no-ckpt@10,all:no-ckpt@4", steps=30, all_steps=10)
    assert [(s.grad_steps, s.variant, s.steps) for s in specs] == [
        (1, "ckpt", 30), (5, "ckpt", 30), ("all", "ckpt", 10), (1, "no-ckpt", 10), ("all", "no-ckpt", 4)]
    assert [rs.depth(s) for s in specs] == [1, 5, 10, 1, 4]
    assert rs.depth(rs.TokenSpec(5, "ckpt", 3)) == 3  # grad_steps is capped by the sampler steps, as in Diffusion
    for bad, word in (("1:foo", "foo"), ("1:unet-gc", "unet-gc"), ("0", "positive"), ("x", "positive"), ("1@0", "@0")):
        with pytest.raises(ValueError, match=word):
            rs.parse_token_rows(bad, steps=30, all_steps=10)


def test_memory_time_model_recovers_a_linear_cost_and_extrapolates():
    """Rows made from known coefficients give those coefficients back and the right 30-step prediction."""
    rs = _script()

    def row(steps, k, variant="ckpt"):
        return {"kind": "token", "variant": variant, "status": "ok", "grad_steps": "all" if k == steps else str(k),
                "steps": steps, "k": k, "forward_s": 5 + 2 * steps, "backward_s": 3 + 6 * k,
                "delta_mb": 4000 + 10 * k, "base_mb": 5000.0, "peak_mb": 9000 + 10 * k, "seconds": 8 + 2 * steps + 6 * k}

    rows = [row(30, 1), row(30, 5), row(10, 10), row(10, 1, "unet-gc")]
    info = {"params_m": {"unet": 1000.0, "vae": 100.0, "text_encoder": 100.0, "classifier": 50.0},
            "weights_mb": {"unet": 4000.0}}
    fit = rs.memory_time_model(rows, info, target=30)
    assert fit["sampler_step_s"] == pytest.approx(2) and fit["forward_a_s"] == pytest.approx(5)
    assert fit["grad_step_backward_s"] == pytest.approx(6) and fit["backward_c_s"] == pytest.approx(3)
    assert fit["delta_per_grad_step_mb"] == pytest.approx(10) and fit["delta_m0_mb"] == pytest.approx(4000)
    full = fit["predicted"]["all"]
    assert full["k"] == 30 and full["seconds"] == pytest.approx(5 + 60 + 3 + 180)
    assert full["peak_mb"] == pytest.approx(5000 + 4000 + 300)
    assert full["gpu_bf16_peak_mb_low"] == pytest.approx(1200 * 2 + 50 * 4 + 4300 / 2)
    assert rows[2]["seconds_at_target"] == pytest.approx(rows[2]["seconds"] + 20 * 2)  # 10 -> 30 sampler steps
    checks = {t["grad_steps"]: t for t in rs.targets(fit, rows, "cpu")}
    assert checks["1"]["measured_pass"] is True and checks["1"]["measured_peak_gb"] == pytest.approx(9.01)
    assert checks["all"]["measured_steps"] == 10 and checks["all"]["model_peak_gb_at_target"] == pytest.approx(9.3)


@pytest.mark.slow
def test_quick_run_reports_every_row_with_finite_figures(tmp_path):
    out = tmp_path / "real_size.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    data = json.loads(out.read_text())
    rows = data["rows"]
    tokens = {(r["model"], r["grad_steps"], r["variant"]) for r in rows if r["kind"] == "token"}
    assert tokens == {(m, gs, v) for m in ("sd15", "sd21-base")
                      for gs, v in (("1", "ckpt"), ("5", "ckpt"), ("all", "ckpt"), ("1", "no-ckpt"))}
    assert {(r["model"], r["batch"]) for r in rows if r["kind"] == "generate"} == {
        (m, b) for m in ("sd15", "sd21-base") for b in (1, 2)}
    numeric = {"token": ("seconds", "forward_s", "backward_s", "peak_mb", "delta_mb", "base_mb", "forward_peak_mb", "loss",
                         "seconds_at_target"),
               "generate": ("seconds", "images_per_s", "s_per_image", "decode_s", "sampler_step_s",
                            "s_per_image_at_target", "peak_mb", "delta_mb", "base_mb")}
    for r in rows:
        assert r["status"] == "ok", r
        for key in numeric[r["kind"]]:
            assert isinstance(r[key], float) and math.isfinite(r[key]), (key, r)
        assert r["seconds"] > 0 and r["peak_mb"] >= r["base_mb"] > 0
    for key, entry in data["models"].items():
        assert entry["info"]["tokenizer_size"] == 49408, key  # the text encoder's real vocabulary
        assert entry["info"]["attention"] == "AttnProcessor2_0", key  # SDPA
        assert {t["grad_steps"] for t in entry["targets"]} == {"1", "all"}
        assert all(math.isfinite(p["peak_mb"]) for p in entry["fit"]["predicted"].values())
    assert "sd15" in proc.stdout and "status" in proc.stdout  # the printed table
    shown = subprocess.run([sys.executable, str(SCRIPT), "--show", str(out)], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "no-ckpt" in shown.stdout and "target grad_steps all" in shown.stdout


@pytest.mark.parametrize("variant", ["ckpt", "no-ckpt"])
def test_a_token_row_times_exactly_one_step_without_validation(micro_pipe, micro_classifier, monkeypatch, variant):
    """One gradient sampler run and one update, no validation images; checkpointing on or off."""
    import torch

    from augment.models.diffusion import Diffusion

    rs = _script()
    monkeypatch.setattr(rs, "INIT_TOKEN", "dog")
    monkeypatch.setattr(rs, "PROMPTS", ["a photo of a {token} {name}"])
    runs: list[tuple[int, bool, bool | None]] = []
    real = Diffusion.sample_latents

    def counted(self, latents, *args, **kwargs):
        runs.append((len(latents), bool(kwargs.get("grad_steps")), kwargs.get("checkpointing")))
        return real(self, latents, *args, **kwargs)

    monkeypatch.setattr(Diffusion, "sample_latents", counted)
    job = {"token_batch": 2, "resolution": 32}
    row = rs.run_token_row(micro_pipe, micro_classifier, rs.TokenSpec(1, variant, 2), job, 0, torch.device("cpu"))
    assert row["status"] == "ok", row
    assert runs == [(2, True, variant == "ckpt")]  # the step's sampler run alone: no validation batches
    assert row["seconds"] == pytest.approx(row["forward_s"] + row["backward_s"])
    assert row["variant"] == variant and row["peak_mb"] >= row["base_mb"] > 0


def test_merge_keeps_every_run_and_refuses_runs_measured_differently(tmp_path):
    """--show merges per-model runs into one table, but never mixes allocator settings or targets."""
    rs = _script()
    run = {"config": {"steps": 30, "device_type": "cpu", "malloc": "mmap"}, "environment": {"load_start": 1.5, "load_end": 2.0},
           "models": {}, "rows": []}
    a, b, old = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "old.json"
    a.write_text(json.dumps(run))
    b.write_text(json.dumps({**run, "environment": {"load_start": 0.5, "load_end": 4.0}}))
    old.write_text(json.dumps({**run, "config": {"steps": 30, "device_type": "cpu"}}))  # before --malloc: glibc defaults
    merged = rs.merge_results([str(a), str(b)])
    assert [r["file"] for r in merged["runs"]] == [str(a), str(b)]
    assert (merged["environment"]["load_start"], merged["environment"]["load_end"]) == (0.5, 4.0)
    with pytest.raises(ValueError, match="malloc"):
        rs.merge_results([str(a), str(old)])
