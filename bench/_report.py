"""Helpers shared by the bench scripts: percentiles, the markdown table, machine facts, and
the results files (a markdown report plus a JSON file with the raw summary next to it).

Not a test module: pytest collects only tests/ (see pyproject.toml).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# Packages whose versions change what a benchmark measures; absent ones are reported as None.
PACKAGES = ("shmkv", "numpy", "xxhash", "mmh3", "posix-ipc", "lmdb", "pyzmq")

TABLE_COLUMNS = ("system", "op", "n", "median ns", "p99 ns", "ops/s", "ratio vs shmkv")


def percentiles(samples: Iterable[float]) -> dict[str, float]:
    """median, p90, p99 and max of samples (nearest-rank: every figure is a real sample, so
    a p99 over few samples is never an interpolation between two of them)."""
    xs = sorted(samples)
    if not xs:
        raise ValueError("no samples")

    def rank(p: float) -> float:
        # nearest rank: the smallest sample with at least p% of samples at or below it
        i = max(0, -(-len(xs) * p // 100) - 1)
        return xs[int(i)]

    n = len(xs)
    median = xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
    return {"median": median, "p90": rank(90), "p99": rank(99), "max": xs[-1]}


def row(system: str, op: str, n: int, p: dict[str, float], base_ns: float) -> dict[str, Any]:
    """One table row from percentiles(samples in ns): median, p99, ops/s, ratio to base_ns."""
    return {"system": system, "op": op, "n": n, "median_ns": p["median"], "p99_ns": p["p99"],
            "ops_per_s": 1e9 / p["median"], "ratio": p["median"] / base_ns}


def _fmt_num(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of TABLE_COLUMNS. Each row: system, op, n, median_ns, p99_ns,
    ops_per_s, ratio (None where there is no shmkv figure to compare against). A row with
    "na" (a reason, e.g. "n/a (not available)") has no figures: the reason fills the row."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(TABLE_COLUMNS) - 2)) + "|"]
    for r in rows:
        if r.get("na"):
            cells = [str(r["system"]), str(r["op"]), "-", str(r["na"])] + ["-"] * 3
            lines.append("| " + " | ".join(cells) + " |")
            continue
        ratio = r.get("ratio")
        cells = [
            str(r["system"]), str(r["op"]), _fmt_num(r["n"]),
            _fmt_num(r["median_ns"]), _fmt_num(r["p99_ns"]), _fmt_num(r["ops_per_s"]),
            "-" if ratio is None else f"{ratio:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_info(packages: Iterable[str] = PACKAGES) -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "packages": package_versions(packages),
    }


def git_commit() -> str | None:
    """Short HEAD commit, with "+dirty" if the working tree has changes (a number measured on
    uncommitted code must say so); None if git or the repository is unavailable."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, timeout=10, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=REPO, capture_output=True, text=True, timeout=10,
                                check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def machine_line(info: dict[str, Any]) -> str:
    pk = ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v)
    return (f"{info['cpu_model']}, {info['cpu_count']} CPUs, Linux {info['kernel']}, "
            f"{info['python_implementation']} {info['python']}; {pk}")


def write_results(out_dir: str | os.PathLike[str], name: str, title: str, command: str,
                  table_md: str, notes: Sequence[str],
                  summary: dict[str, Any]) -> tuple[Path, Path]:
    """Write <out_dir>/<name>-<hostname>-<YYYYMMDD>.md and .json; return both paths.

    The markdown holds what a reader needs to judge the numbers (date, machine, commit, exact
    command, notes) and the table; the JSON holds the same facts plus the raw summary."""
    info = machine_info()
    now = _dt.datetime.now(_dt.timezone.utc)
    stem = f"{name}-{info['hostname']}-{now:%Y%m%d}"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out / f"{stem}.md", out / f"{stem}.json"
    write_report(md_path, json_path, title=title, command=command, body_md=table_md,
                 notes=notes, summary=summary, info=info, now=now)
    return md_path, json_path


def write_report(md_path: str | os.PathLike[str] | None,
                 json_path: str | os.PathLike[str] | None, *, title: str, command: str,
                 body_md: str, notes: Sequence[str], summary: dict[str, Any],
                 info: dict[str, Any] | None = None,
                 now: _dt.datetime | None = None) -> None:
    """Write the markdown report and/or the JSON file (a None path is skipped): the date, the
    machine (info, default machine_info()), the commit and the exact command, then body_md
    and the notes; the JSON holds the same facts plus the raw summary."""
    info = info if info is not None else machine_info()
    now = now if now is not None else _dt.datetime.now(_dt.timezone.utc)
    commit = git_commit()
    if md_path is not None:
        header = [
            f"# {title}",
            "",
            f"- date: {now:%Y-%m-%d %H:%M:%S} UTC",
            f"- machine: {machine_line(info)}",
            f"- commit: {commit or 'unknown'}",
            f"- command: `{command}`",
            "",
        ]
        body = [body_md, ""] + [f"- {n}" for n in notes]
        Path(md_path).write_text("\n".join(header + body) + "\n", encoding="utf-8")
    if json_path is not None:
        doc = {"title": title, "date_utc": now.isoformat(timespec="seconds"), "machine": info,
               "commit": commit, "command": command, "notes": list(notes), "summary": summary}
        Path(json_path).write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n",
                                   encoding="utf-8")


def print_and_save(name: str, title: str, rows: Sequence[dict[str, Any]], notes: Sequence[str],
                   out_dir: str | None) -> None:
    """Print the table and notes of a run; with out_dir, also write them (write_results) with
    the command line that produced them."""
    print_and_save_table(name, title, markdown_table(rows), notes, out_dir, {"rows": list(rows)})


def print_and_save_table(name: str, title: str, table: str, notes: Sequence[str],
                         out_dir: str | None, summary: dict[str, Any]) -> None:
    """print_and_save for a table of a script's own columns, with its own summary."""
    print(table)
    print("\n".join(f"- {n}" for n in notes))
    if out_dir:
        script = Path(sys.argv[0]).resolve().relative_to(REPO)
        command = "python " + " ".join(shlex.quote(a) for a in [str(script), *sys.argv[1:]])
        md, js = write_results(out_dir, name, title, command, table, notes, summary)
        print(f"wrote {md} and {js}")


def time_each(op: Callable[[], object], reps: int) -> list[int]:
    """ns of each of reps calls of op, one clock reading pair per call."""
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        op()
        samples.append(time.perf_counter_ns() - t0)
    return samples


def add_run_arguments(parser: Any, rounds: bool = True, seed: bool = True) -> None:
    """The options every bench that writes results shares: --rounds, --seed, --quick, --out."""
    if rounds:
        parser.add_argument("--rounds", type=int, default=3)
    if seed:
        parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="one short round, no files")
    parser.add_argument("--out", help="results directory (default bench/results; none with "
                        "--quick)")
