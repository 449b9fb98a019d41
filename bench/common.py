"""What every benchmark shares: the Section it returns, machine/version facts, timing, markdown.

A benchmark module exposes `NAME`, `TITLE` and `run(quick: bool, workdir: Path) -> Section`.
Sections are rendered between `<!-- bench:NAME -->` markers so one can be re-run (`--only`)
and replaced in BENCHMARKS.md without touching the others.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Check:
    """One ratio against its target, with the absolute values it came from."""

    label: str  # e.g. "TFRecord plain / in-memory (clips/s)"
    value: float | None  # None: not measured (e.g. no GPU)
    target: str  # e.g. "≥ 0.8×"
    passed: bool | None  # None: no target or not measured
    detail: str = ""  # the absolute values, e.g. "412 / 455 clips/s"


@dataclass
class Section:
    name: str
    title: str
    setup: str  # shapes, sizes, what is compared — one paragraph
    columns: list[str]
    rows: list[list]
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: list[tuple[str, list[str], list[list]]] = field(
        default_factory=list
    )  # (caption, columns, rows) after the main one
    seconds: float = 0.0
    quick: bool = False

    def markdown(self) -> str:
        """The section as markdown between its bench markers."""
        out = [f"<!-- bench:{self.name} -->", f"## {self.title}", ""]
        if self.quick:
            out += ["_`--quick`: tiny sizes that prove the benchmark runs; these figures are not measurements._", ""]
        out += [self.setup, "", table(self.columns, self.rows), ""]
        for caption, columns, rows in self.tables:
            out += [caption, "", table(columns, rows), ""]
        if self.checks:
            out.append("**Result**")
            out.append("")
            for c in self.checks:
                value = "not measured" if c.value is None else f"**{c.value:.3g}×**"
                verdict = {True: "PASS", False: "FAIL", None: "—"}[c.passed]
                detail = f" ({c.detail})" if c.detail else ""
                out.append(f"- {c.label}: {value}{detail}; target {c.target}: {verdict}")
            out.append("")
        out += [f"- {n}" for n in self.notes]
        if self.notes:
            out.append("")
        out += [f"_Ran in {self.seconds:.0f} s on {stamp()}._", f"<!-- /bench:{self.name} -->"]
        return "\n".join(out)


def table(columns: list[str], rows: list[list]) -> str:
    """A markdown table; floats formatted by fmt()."""

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(v) if isinstance(v, float) else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(v: float) -> str:
    """1,234 for large numbers, 3 significant digits below 100."""
    if v != v or abs(v) == float("inf"):
        return str(v)
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def ratio_check(
    label: str, num: float, den: float, target: float | None, unit: str, *, higher_is_better: bool = True
) -> Check:
    """num/den against `≥ target` (`≤ target` when lower is better); target None: reported, not judged."""
    value = num / den if den else float("nan")
    if target is None:
        return Check(label, value, "none (for reference)", None, f"{fmt(num)} / {fmt(den)} {unit}")
    passed = value >= target if higher_is_better else value <= target
    sign = "≥" if higher_is_better else "≤"
    return Check(label, value, f"{sign} {target:g}×", bool(passed), f"{fmt(num)} / {fmt(den)} {unit}")


def nfp_config(overrides: list[str], path: str | Path | None = None):
    """nfp's Config from a YAML + overrides; clips shorter than 20 frames get a k → k protocol to fit."""
    from nfp.config import load_config

    frames = next((int(o.split("=", 1)[1]) for o in overrides if o.startswith("data.frames=")), 20)
    if frames < 20:
        k = frames // 2
        overrides = [*(f"{s}.{w}_frames={k}" for s in ("data", "evaluate") for w in ("context", "predict")), *overrides]
    return load_config(path, overrides)


# --------------------------------------------------------------------------- facts
def stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def machine() -> dict:
    """CPU model, cores usable by this process, RAM, OS, GPUs (names only if TF is already imported)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError):
        mem_gb = float("nan")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "logical_cpus": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "os": platform.platform(),
    }


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("tensorflow", "keras", "mlflow", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        # The report itself is rewritten section by section: its own changes do not make the code "modified".
        status = ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)BENCHMARKS.md"]
        dirty = subprocess.run(status, cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        out["nfp commit"] = commit + (" (modified)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        out["nfp commit"] = "unknown"
    return out


def header(quick: bool) -> str:
    m, v = machine(), versions()
    lines = [
        "# nfp benchmarks",
        "",
        "Generated by `python -m bench`"
        + (" --quick (tiny sizes, not measurements)" if quick else "")
        + f" on {stamp()}.",
        "Each figure is a side-by-side comparison measured in one process run; re-run one with `python -m bench --only NAME`.",
        "",
        f"- **Machine**: {m['cpu']}, {m['cores']} cores usable ({m['logical_cpus']} logical CPUs), {m['memory_gb']} GB RAM, {m['os']}",
        "- **Versions**: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- timing
def median_rate(fn, units: float, *, repeats: int) -> tuple[float, list[float]]:
    """Run fn() `repeats` times; (median units/s, the per-repeat seconds)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return units / statistics.median(times), times


def run_child(module: str, args: dict, *, timeout: float, env: dict | None = None) -> tuple[dict, float]:
    """Run `python -m module JSON` in a fresh process; (the JSON it prints last, its peak RSS in MB).

    Peak RSS is the child's own VmHWM (/proc/self/status), read by the child as it ends. Not
    ru_maxrss: on Linux exec() carries the parent's high-water mark at fork into the child's, so
    every child of a big bench process would report at least the parent's size.
    """
    import tempfile
    import threading

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, json.dumps(args)],
            cwd=REPO,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
            stdout=out,
            stderr=err,
        )
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, _ = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        why = f"killed after {timeout:.0f} s" if proc.returncode == -9 else f"exited with {proc.returncode}"
        raise RuntimeError(f"{module} {why}:\n{tail}")
    lines = [ln for ln in stdout.strip().splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{module}: printed no JSON result")
    result = json.loads(lines[-1])
    return result, result.pop("_peak_rss_mb")


def child_main(fn) -> None:
    """Entry point of a child module: fn(args dict) -> dict, printed as one JSON line."""
    result = fn(json.loads(sys.argv[1]))
    print(json.dumps({**result, "_peak_rss_mb": _peak_rss_mb()}), flush=True)


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


# --------------------------------------------------------------------------- the file
_SECTION = re.compile(r"<!-- bench:(?P<name>[\w-]+) -->.*?<!-- /bench:(?P=name) -->", re.S)


def sections_of(text: str) -> dict[str, str]:
    """{name: section markdown} of a BENCHMARKS.md, in file order."""
    return {m["name"]: m.group(0) for m in _SECTION.finditer(text)}


def merge(old_text: str | None, new: dict[str, str], order: list[str]) -> dict[str, str]:
    """Sections of the old file with those in `new` replaced, in benchmark order (unknown names last)."""
    merged = sections_of(old_text or "")
    merged.update(new)
    rank = {name: i for i, name in enumerate(order)}
    return dict(sorted(merged.items(), key=lambda kv: rank.get(kv[0], len(order))))


def replace_sections(old_text: str, new: dict[str, str], order: list[str]) -> str:
    """The old file with each section in `new` put in its place: its header and any hand-written text between
    sections kept as they are; a section it did not have goes before the first later one in `order`, else last."""
    text = old_text
    present = sections_of(old_text)
    rank = {name: i for i, name in enumerate(order)}
    for name, section in new.items():
        if name in present:
            text = text.replace(present[name], section, 1)
            continue
        later = [n for n in sections_of(text) if rank.get(n, len(order)) > rank.get(name, len(order))]
        if later:
            anchor = sections_of(text)[later[0]]
            text = text.replace(anchor, section + "\n\n" + anchor, 1)
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
    return text


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
