"""Model quality per GPU-second, recorded: nfp's presets (Keras 3 / JAX backend) next to OpenSTL's ConvLSTM-S (PyTorch).

The GPU machines lent for measuring have PyTorch and JAX but no TensorFlow, so nfp's own TF path
cannot run there. What runs is nfp's model definition (`nfp.models.build_model`) under Keras 3 on
JAX, trained by a plain `train_on_batch` loop, and OpenSTL's ConvLSTM-S cell in PyTorch, on the same
8,000 generated 20×64×64 clips, batch 16, for the same seconds of training, each scored 10 → 10 on
the same 512 held-out clips at 75 s and 140 s (the probe, now `bench/probe.py`, with
PROBE_MILESTONES=75,140; see bench/PROBE.md). The figures are recorded in bench/results/gpu_probe_<card>.jsonl, one
JSON object per scored point, as the probe wrote them; this module renders them (nothing runs here).
"""

from __future__ import annotations

import json

from bench.common import REPO, Check, Section

NAME = "gpu_probe"
TITLE = "7. Model quality per GPU-second: nfp's presets next to OpenSTL's ConvLSTM-S (Keras 3 / JAX backend, H200)"
RESULTS = REPO / "bench/results/gpu_probe_h200.jsonl"
PEER = "openstl_convlstm_s_patch4"
NFP = "nfp_convlstm_s"  # configs/multi_gpu.yaml's model
# OpenSTL's ConvLSTM-S measured by the same probe on an H200 in an earlier session (issue 18): MSE at 75 s / 140 s
EARLIER_PEER = {75: 48.9, 140: 34.9}
LABELS = {
    NFP: "nfp `convlstm_s` (nfp cell, linear head, MSE), Adam 1e-3",
    "nfp_convlstm_s_lr2e-3": "nfp `convlstm_s`, Adam 2e-3",
    "keras_cell_same_recipe": "same recipe on `keras.layers.ConvLSTM2D` (`model.cell=keras`)",
    "keras_io_bce": "nfp `keras_io` (the former GPU default: ConvLSTM2D + BN, sigmoid, BCE)",
    PEER: "OpenSTL ConvLSTM-S cell (PyTorch, eager), Adam 1e-3",
    # the SimVP family (bench/PROBE.md, "SimVP / TAU"): direct, 10 → 10, Adam with OneCycle to 1e-3 over the run
    "tau": "nfp `tau` (SimVP + TAU, MSE + 0.1 differential divergence), Adam, OneCycle 1e-3",
    "simvp_gsta": "nfp `simvp_gsta` (SimVP v2 gSTA, MSE), Adam, OneCycle 1e-3",
    "openstl_tau": "OpenSTL TAU (PyTorch, eager), Adam, OneCycle 1e-3",
    "openstl_simvp_gsta": "OpenSTL SimVP gSTA (PyTorch, eager), Adam, OneCycle 1e-3",
    # PredRNN-V2 and PredFormer (bench/PROBE.md, "PredRNN-V2 / PredFormer"), each beside its PyTorch peer
    "predrnn_v2": "nfp `predrnn_v2` (MSE + 0.1 decoupling, reverse scheduled sampling), Adam, OneCycle 5e-4",
    "predformer": "nfp `predformer` (Quadruplet-TSST, MSE), AdamW wd 1e-2, OneCycle 1e-3",
    "openstl_predrnn_v2": "OpenSTL PredRNN-V2 (PyTorch, eager), Adam, OneCycle 5e-4",
    "predformer_quadruplet_tsst": "PredFormer Quadruplet-TSST (PyTorch, eager), AdamW wd 1e-2, OneCycle 1e-3",
}
COMPILED_PEER = "OpenSTL ConvLSTM-S cell (PyTorch, torch.compile), Adam 1e-3"
# each family's nfp preset → its PyTorch peer: nfp's MSE ≤ 0.8 × the peer's at equal GPU-seconds (issues 22 and 34)
FAMILY_PEERS = {"tau": "openstl_tau", "predrnn_v2": "openstl_predrnn_v2", "predformer": "predformer_quadruplet_tsst"}
FAMILY_TARGET = 0.8


def mode(p: dict) -> str:
    """A torch line's mode: "eager" or "compile"; lines without one (the recorded H200 file, Keras lines) are eager."""
    return p.get("mode", "eager")


def label(p: dict) -> str:
    text = LABELS.get(p["model"], p["model"])
    if p["part"] == "torch" and mode(p) == "compile":
        return COMPILED_PEER if p["model"] == PEER else text.replace("eager", "torch.compile")
    return text


def run(quick: bool, workdir) -> Section:
    records = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    session = next(r for r in records if r.get("part") == "session")
    baselines = next(r for r in records if r.get("part") == "baselines")
    points = [r for r in records if "model" in r and "error" not in r]
    failed = [r for r in records if "model" in r and "error" in r]  # a failing torch.compile's line
    rows = [
        [label(p), "PyTorch" if p["part"] == "torch" else "Keras 3 / JAX", p["policy"],
         f"{p['params']:,}", round(p["train_s"]), p["steps"], p["clips_per_s"], p["mse"], p["mae"], p["ssim"]]
        for p in sorted(points, key=lambda p: (p["train_s"] > 100, p["mse"]))
    ]  # fmt: skip
    rows += [[f"{name.replace('_', '-')} baseline", "—", "—", "—", "—", "—", "—", b["mse"], b["mae"], b["ssim"]]
             for name, b in ((k, baselines[k]) for k in ("copy_last", "mean_frame"))]  # fmt: skip

    def mse(model: str, seconds: int, how: str = "eager") -> float | None:
        """The MSE of `model` at `seconds` of training; the peer's eager rows unless `how` is "compile"."""
        at = [p for p in points if p["model"] == model and mode(p) == how and abs(p["train_s"] - seconds) < 2]
        return at[0]["mse"] if at else None

    checks = []
    for seconds in (75, 140):
        ours, peer = mse(NFP, seconds), mse(PEER, seconds)
        if ours is None or peer is None:  # a file of the SimVP / TAU command: its own checks below
            continue
        checks.append(Check(f"nfp `convlstm_s` MSE / OpenSTL ConvLSTM-S MSE after {seconds} s, same session", ours / peer,
                            "≤ 1×", ours <= peer, f"{ours:.1f} / {peer:.1f}"))  # fmt: skip
        compiled = mse(PEER, seconds, "compile")
        if compiled is not None:
            checks.append(Check(f"nfp `convlstm_s` MSE / the peer under torch.compile after {seconds} s", ours / compiled,
                                "≤ 1×", ours <= compiled, f"{ours:.1f} / {compiled:.1f}"))  # fmt: skip
        earlier = EARLIER_PEER[seconds]
        checks.append(Check(f"nfp `convlstm_s` MSE / the issue's reference figure for the peer at {seconds} s", ours / earlier,
                            "≤ 1×", ours <= earlier, f"{ours:.1f} / {earlier}"))  # fmt: skip
    # each family's preset against its peer at each milestone where the file has both (the family commands' lines)
    for model, peer_model in FAMILY_PEERS.items():
        for seconds in sorted({round(p["train_s"]) for p in points if p["model"] == model}):
            for how in ("eager", "compile"):
                ours, peer = mse(model, seconds), mse(peer_model, seconds, how)
                if ours is not None and peer is not None:
                    checks.append(Check(f"nfp `{model}` MSE / {LABELS[peer_model].split(' (')[0]} ({how}) MSE after "
                                        f"{seconds} s, same session", ours / peer, f"≤ {FAMILY_TARGET}×",
                                        ours <= FAMILY_TARGET * peer, f"{ours:.1f} / {peer:.1f}"))  # fmt: skip
    # the notes on the stock Keras cell and on Adam 2e-3 need those rows (the recorded H200 file has them at 75 s)
    stock, fast_lr, ours_75 = mse("keras_cell_same_recipe", 75), mse("nfp_convlstm_s_lr2e-3", 75), mse(NFP, 75)
    steps_at = lambda model: next(p["steps"] for p in points if p["model"] == model and abs(p["train_s"] - 75) < 2)
    peer_rates = [p["clips_per_s"] for p in points if p["model"] == PEER and mode(p) == "eager"]
    return Section(
        NAME, TITLE,
        setup=(
            f"**Keras 3 / JAX backend, {session['card']}**, {session['date']}; keras {session['keras']}, jax {session['jax']}, "
            f"torch {session['torch']}. {__doc__.split(chr(10) + chr(10))[1].strip()} Rows sorted by training time, then MSE "
            "(OpenSTL's: per-frame sum of squared errors over 64×64, averaged over frames and clips)."
        ),
        columns=["model", "framework", "precision", "params", "train s", "steps", "clips/s", "MSE", "MAE", "SSIM"],
        rows=rows,
        checks=checks,
        notes=[
            *(["Why the stock Keras stack trails (same shape, patches, linear head, MSE, bf16 — row 'same recipe on "
               f"keras.layers.ConvLSTM2D': MSE {stock:.1f} at 75 s): per step and layer it runs eight narrow convolutions "
               "(one per gate, for the input and for the state) where nfp's cell runs one over [x, h], so it gets "
               f"{steps_at('keras_cell_same_recipe') / steps_at(NFP):.2f}× the steps; per step the two learn alike (on "
               "the CPU: docs/benchmarks.md, \"Quality recipe\"). nfp's cell also keeps the cell state in float32, a safeguard for "
               "long runs that cost nothing measurable in short ones."] if stock is not None else []),
            *([f"A higher learning rate (2e-3) learned {'less' if fast_lr > ours_75 else 'more'} in 75 s than 1e-3."]
              if fast_lr is not None else []),
            *([f"The peer here ran at {min(peer_rates):.0f}–{max(peer_rates):.0f} clips/s; in the earlier session it "
               "ran at 259–288 clips/s (same card and probe): its figures from then are checked as well."]
              if peer_rates else []),
            f"Recorded in `{RESULTS.relative_to(REPO)}` (probe: {session['probe']}).",
            *(f"The peer under torch.compile gave no row: {r['error']}" for r in failed),
        ],
        quick=quick,
    )  # fmt: skip
