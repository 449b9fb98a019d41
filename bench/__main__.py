"""`python -m bench`: run the benchmarks side by side and write BENCHMARKS.md.

python -m bench                    full sizes → BENCHMARKS.md (the GPU section runs when a GPU is visible)
python -m bench --quick            tiny sizes → outputs/bench/BENCHMARKS.quick.md (proves each runs)
python -m bench --only pipeline    one benchmark, replacing its section in the output file
python -m bench --gpu              only the GPU figures (needs a visible GPU)
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.common import REPO, Section, header, merge, replace_sections, write_atomic

# Benchmark modules in report order; each has NAME, TITLE and run(quick, workdir) -> Section.
MODULES = ["pipeline", "training", "data_prep", "scaling", "quality", "gpu", "gpu_probe", "xla", "sources", "sweep"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds each): proves every benchmark runs")
    p.add_argument(
        "--only",
        action="append",
        choices=MODULES,
        metavar="NAME",
        help=f"run only these ({', '.join(MODULES)}); repeatable",
    )
    p.add_argument("--gpu", action="store_true", help="only the GPU figures (same as --only gpu)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="report file (default: BENCHMARKS.md, or outputs/bench/BENCHMARKS.quick.md with --quick)",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="scratch dir for data and runs (default: a temporary dir, removed after)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = ["gpu"] if args.gpu else (args.only or MODULES)
    out = args.out or (REPO / ("outputs/bench/BENCHMARKS.quick.md" if args.quick else "BENCHMARKS.md"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

    with tempfile.TemporaryDirectory(prefix="nfp-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        # Runs track into a scratch store, never the user's ./mlflow.db.
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "TF_CONFIG"):
            os.environ.pop(var, None)
        failed = []
        new = {}
        for name in names:
            module = importlib.import_module(f"bench.{name}")
            print(f"[bench] {module.TITLE} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                section = module.run(args.quick, workdir / name)
            except Exception as err:  # noqa: BLE001 - one broken benchmark must not hide the others' figures
                traceback.print_exc()
                failed.append(name)
                section = Section(
                    name,
                    module.TITLE,
                    setup=f"**Did not run**: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                    columns=["benchmark"],
                    rows=[[name]],
                    quick=args.quick,
                )
            section.seconds = time.perf_counter() - t0
            new[name] = section.markdown()
            print(f"[bench] {name}: {section.seconds:.0f} s", file=sys.stderr, flush=True)
            # Written after each benchmark, so a long run that dies keeps what it measured.
            old = out.read_text() if out.exists() and (args.only or args.gpu) else None
            if old is not None:  # --only: the other sections, the header and any hand-written text stay as they are
                write_atomic(out, replace_sections(old, new, MODULES))
            else:
                sections = merge(old, new, MODULES)
                write_atomic(out, header(args.quick) + "\n" + "\n\n".join(sections.values()) + "\n")
    print(f"[bench] wrote {out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
