"""The `nfp` command: prepare, train, evaluate, predict — each `--config PATH` plus `key.path=value` overrides."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import warnings

from nfp import storage
from nfp.errors import NfpError, redact

_OVERRIDES_HELP = "config overrides as key.path=value (e.g. train.epochs=2 model.preset=tiny)"
_SPLITS = ("train", "val", "test")


def _positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (argparse names the flag in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}, expected a whole number >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {value}, expected a whole number >= 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nfp", description="Next-frame video prediction with ConvLSTM, tracked in MLflow."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--version", action="version", version=f"nfp {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument(
            "--config", "-c", default=None, help="YAML config file (configs/*.yaml); defaults apply without one"
        )
        sub.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)
        sub.add_argument(
            "--overrides",
            dest="overrides_string",
            default="",
            metavar="STRING",
            help="more overrides in one shell-quoted string (how MLproject passes them)",
        )
        return sub

    command("prepare", "Build sharded TFRecords + manifest.json from Moving MNIST (download or generate) or your own "
            "videos, frame folders or arrays (data.source, data.path).")  # fmt: skip
    dv = command("demo-videos", "Write demo mp4 videos (digits over colour photos, data.frame_size) to try "
                 "data.source: video offline.")  # fmt: skip
    dv.add_argument("--out", default="data/demo_videos", help="directory (default: data/demo_videos)")
    dv.add_argument("--videos", type=_positive_int, default=12, help="how many (default: 12)")
    dv.add_argument("--frames", type=_positive_int, default=60, help="frames each (default: 60)")
    command("train", "Train a ConvLSTM (prepares the data first if its manifest is missing); logs to MLflow.")
    pv = command(
        "preview",
        "Draw the first clips of each split (PNG rows of frames, GIF of one clip); prepares the data if needed.",
    )
    pv.add_argument("--split", choices=[*_SPLITS, "all"], default="all", help="split to draw (default: all)")
    pv.add_argument("--clips", type=_positive_int, default=3, help="clips per split (default: 3)")
    pv.add_argument("--out", default=None, help="output directory (default: <train.output_dir>/preview)")
    command("config", "Print the resolved config (after overrides) as YAML and exit.")

    ev = command(
        "evaluate", "Evaluate a model on a split with the OpenSTL metrics, next to copy-last/mean-frame baselines."
    )
    ev.add_argument("--model", required=True, help="checkpoint .keras path, MLflow run id, runs:/… or models:/… URI")
    ev.add_argument("--split", choices=_SPLITS, default=None, help="split to score (default: evaluate.split)")
    ev.add_argument("--out", default=None, help="report directory (default: <train.output_dir>/eval)")
    ev.add_argument("--run-id", default=None, help="MLflow run to log into (default: the model's run, else a new one)")

    pr = command(
        "predict", "Predict frames from a model and write a PNG strip, a side-by-side GIF and optionally .npy."
    )
    pr.add_argument("--model", required=True, help="checkpoint .keras path, MLflow run id, runs:/… or models:/… URI")
    pr.add_argument(
        "--input",
        default="split:test:0",
        help="clips: a uint8 .npy in data.layout (default TNHW: time, clips, H, W) [path or path:INDEX], "
        "split:NAME:INDEX from the manifest, generate:SEED, or a video file or frame folder (its first data.frames "
        "frames, fitted to the model's frames)",
    )
    pr.add_argument("--context", type=int, default=None, help="context frames (default: evaluate.context_frames)")
    pr.add_argument("--horizon", type=int, default=None, help="frames to predict (default: evaluate.predict_frames)")
    pr.add_argument("--out", default=None, help="output directory (default: <train.output_dir>/predict)")
    pr.add_argument("--save-npy", action="store_true", help="also write the predicted frames as .npy")

    sw = command(
        "sweep",
        "Search the config's sweep.space with Optuna: each trial an `nfp train` in a child run of the study's run on "
        "the tracking server; every `nfp sweep` of the same sweep.study shares the study and its sweep.trials budget.",
    )
    sw.add_argument("--workers", type=_positive_int, default=1,
                    help="worker processes on this machine, one per GPU where it has them (default: 1)")  # fmt: skip

    dr = command(
        "doctor",
        "Preflight for a GPU VM: a few dozen training steps of the config on random clips; devices, precision, XLA, "
        "step time, clips/s, peak memory and FLOP utilisation in a few lines (nfp train logs them to its run).",
    )
    dr.add_argument("--steps", type=int, default=30, help="training steps to time (default: 30; the first compiles)")
    dr.add_argument("--out", default=None, help="report file (default: <train.output_dir>/doctor/<host>.txt)")

    tf = commands.add_parser("tf-config", help="Print the TF_CONFIG for this node (from SkyPilot env vars or --hosts).")
    tf.add_argument("--hosts", default=None, help="host[:port] list separated by commas or whitespace, worker 0 first")
    tf.add_argument("--index", type=int, default=None, help="this node's index in --hosts (0 = chief)")
    tf.add_argument(
        "--port", type=int, default=None, help="1..65535, for hosts given without one (default: $NFP_WORKER_PORT)"
    )
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nfp")
    except PackageNotFoundError:  # a checkout on sys.path, not installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except NfpError as err:
        if args.debug:
            raise
        print(f"error: {redact(str(err))}", file=sys.stderr)  # a URL's user:password never reaches the logs
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The `nfp` executable (and `python -m nfp`): main() with TensorFlow's start-up chatter filtered out of stderr."""
    if "--debug" not in sys.argv[1:]:
        _filter_tensorflow_noise()
        warnings.formatwarning = _one_line_warning
    sys.exit(main())


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as people read it: one line, its text, not the file, line and source of Python that raised it."""
    return f"warning: {redact(str(message)).splitlines()[0] if str(message) else category.__name__}\n"


# What TF 2.21 writes to stderr from C++ on every start (absl logging, before any flag could silence it): news to
# nobody. Lines of real warnings and errors pass.
_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|To enable the following instructions: "
    r"|I\d{4} [\d:.]+ +\d+ \S+\] "  # INFO
    r"|E\d{4} [\d:.]+ +\d+ (cuda_platform|cuda_executor|cuda_diagnostics)\.cc:\d+\] failed call to cuInit"
    r"|[EW]\d{4} [\d:.]+ +\d+ meta_optimizer\.cc:\d+\] remapper failed"
    r"|[EW]\d{4} [\d:.]+ +\d+ util\.cc:\d+\] oneDNN supports DT_BOOL only)"
)


def _filter_tensorflow_noise() -> None:
    """Route the process's stderr (fd 2, where TF's C++ logs go) through a thread that drops _NOISE lines; Python's own
    sys.stderr keeps writing straight to the terminal or log, so nfp's messages are never delayed or lost."""
    import threading

    original = os.dup(2)
    sys.stderr = open(os.dup(original), "w", buffering=1, errors="backslashreplace")
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with open(read_end, "rb") as lines, open(original, "wb", buffering=0) as out:
            for line in lines:
                if not _NOISE.match(line.decode(errors="replace")):
                    out.write(line)

    threading.Thread(target=forward, name="nfp-stderr-filter", daemon=True).start()


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "tf-config":
        from nfp.distribute import tf_config

        print(json.dumps(tf_config.resolve(os.environ, hosts=args.hosts, index=args.index, port=args.port)))
        return 0

    from nfp.config import load_config

    overrides = [*args.overrides, *shlex.split(args.overrides_string)]
    # nfp demo-videos reads the frame size and the seed only: no other key of the config may refuse it
    only = ("data.frame_size", "data.image_size", "data.seed") if args.command == "demo-videos" else None
    cfg = load_config(args.config, overrides, only=only)
    if args.command == "config":
        print(cfg.to_yaml(), end="")
    elif args.command == "prepare":
        from nfp.data.prepare import prepare

        manifest = prepare(cfg.data)
        print(f"prepared {cfg.data.dir}: " + ", ".join(f"{split}={manifest.count(split)}" for split in manifest.splits))
    elif args.command == "demo-videos":
        from nfp.data.demo import others_there, write_demo_videos

        storage.output_dir_flag(args.out, args.out)  # a file or an unwritable place: one line, before any video
        paths = write_demo_videos(args.out, cfg.data, videos=args.videos, frames=args.frames)
        print(f"wrote {len(paths)} videos to {args.out}")
        if others := others_there(args.out, paths):
            print(f"note: {args.out} also holds {len(others)} demo video(s) of an earlier run ({', '.join(others[:3])}"
                  f"{', …' if len(others) > 3 else ''}): data.path reads them too; delete them to keep only these")  # fmt: skip
    elif args.command == "train":
        from nfp.training.train import train

        train(cfg, config_path=args.config)
    elif args.command == "preview":
        from nfp.data import preview
        from nfp.data.prepare import ensure_prepared

        splits = None if args.split in (None, "all") else [args.split]  # None: every split that has clips
        out_dir = storage.output_dir_flag(args.out, storage.join(cfg.train.output_dir, "preview"))
        manifest = ensure_prepared(cfg.data)
        preview.check_has_clips(manifest, splits)
        paths = preview.write(out_dir, preview.from_shards(cfg.data, manifest, splits, args.clips))
        if cfg.tracking.enabled and os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run -e preview`: into its run
            from nfp import tracking

            tracking.log_files(os.environ["MLFLOW_RUN_ID"], paths.values(), "data")
        for name, path in paths.items():
            print(f"{name}: {path}")
    elif args.command == "evaluate":
        from nfp.inference.evaluate import run_evaluate

        report = run_evaluate(cfg, model_uri=args.model, split=args.split, out_dir=args.out, run_id=args.run_id)
        print(json.dumps(report["summary"], indent=2))
    elif args.command == "sweep":
        from nfp.sweep.worker import run_sweep, start_workers

        if args.workers > 1:
            argv = [*(["--config", args.config] if args.config else []), *overrides]
            return start_workers(cfg, args.config, overrides, argv, args.workers)
        run_sweep(cfg, config_path=args.config, overrides=overrides)
    elif args.command == "doctor":
        from nfp.doctor import run_doctor

        report = run_doctor(cfg, steps=args.steps, out=args.out)
        print("\n".join(report["lines"]))
        print(f"doctor: report in {report['path']}", file=sys.stderr)
    elif args.command == "predict":
        from nfp.inference.predict import run_predict

        paths = run_predict(
            cfg,
            model_uri=args.model,
            inputs=args.input,
            context_frames=args.context,
            horizon=args.horizon,
            out_dir=args.out,
            save_npy=args.save_npy,
        )
        for name, path in paths.items():
            print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
