"""`cli.py compare`: does a change really help? Runs grouped by configuration, each group's
mean ± sd over its seeds, and Welch's t-test for every pair of groups.

A run is a `train` directory (run_meta.json + metrics.csv); a sweep directory stands for its
members. Two runs share a group when their configurations agree once the seed, and where and
how fast they ran (directory, device, --compile), are left out. The configuration is read as
the run resolved it (run_meta.json's architecture, shapes, optimizer and autocast), not as
flags left unset, so `--model gpt-fast` and a default that means gpt-fast group together.

Welch's test does not assume equal variances, which two optimizers rarely have. The effect
size is Cohen's d over the average of the two variances. p-values are per pair, not
corrected for the number of pairs.
"""

from __future__ import annotations

import datetime
import io
import itertools
import math
import statistics
import string
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from .. import fileio
from ..config import CompareConfig
from ..errors import UserError
from . import metrics
from .runstate import git_commit
from .sweep import SWEEP_FILE

RUN_FILE = "run_meta.json"
# Flags that say where or how fast a run went, not what it trained: never a group's key.
NOT_CONFIG = frozenset({
    "seed", "ckpt_dir", "resume", "device", "compile", "data_dir", "tokenizer_path", "amp",
    "amp_dtype", "auto_microbatch", "activation_checkpointing", "save_strategy", "init_from",
    # resolved from run_meta.json below, so an unset flag and its default agree
    "model", "n_layer", "n_head", "n_embd", "block_size", "tie_weights", "auto_tie_weights",
    "optimizer", "schedule", "cosine_lr", "mode",
})  # fmt: skip
MUON_ONLY = ("muon_lr", "muon_momentum", "muon_ns_dtype")
SHAPE = ("n_layer", "n_head", "n_embd", "block_size", "tie_weights")


class Run(NamedTuple):
    path: Path
    seed: int
    config: dict[str, Any]  # what trained: its group's key
    data: dict[str, Any]  # what its val loss is measured on: must agree across all runs
    rows: list[metrics.Row]  # the evaluations, in order
    value: float  # the compared metric


class Group(NamedTuple):
    name: str  # A, B, ...
    label: str  # the keys on which the groups differ
    config: dict[str, Any]
    runs: list[Run]

    @property
    def values(self) -> list[float]:
        return [r.value for r in self.runs]


def run_dirs(path: Path) -> list[Path]:
    """The run directories a path stands for: itself, or a sweep's members in order."""
    if not path.exists():
        raise UserError(f"{path} does not exist; give train run or sweep directories")
    if (path / SWEEP_FILE).is_file():
        members = sorted(p for p in path.glob("member-*") if p.is_dir())
        if not members:
            raise UserError(f"sweep {path} has no member-XX directories yet")
        return members
    if (path / RUN_FILE).is_file():
        return [path]
    raise UserError(f"{path} holds neither {RUN_FILE} (a train run) nor {SWEEP_FILE} (a sweep)")


def _read_meta(path: Path) -> dict[str, Any]:
    file = path / RUN_FILE
    if not file.is_file():
        raise UserError(f"{path} has no {RUN_FILE} yet: it has not been evaluated once")
    try:
        meta = orjson.loads(file.read_bytes())
        meta["train_config"], meta["model_config"], meta["optimizer"]  # noqa: B018
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{file} is not a run_meta.json that train wrote") from None
    return meta


def run_config(meta: dict[str, Any]) -> dict[str, Any]:
    """The configuration that trained a run, without its seed or where and how it ran."""
    flags = meta["train_config"]
    optimizer = meta["optimizer"].get("name", flags.get("optimizer"))
    config = {"model": meta["arch"], **{k: meta["model_config"].get(k) for k in SHAPE},
              "optimizer": optimizer, "schedule": meta["optimizer"].get("schedule"),
              "autocast": (meta.get("amp") or {}).get("autocast", meta.get("dtype"))}  # fmt: skip
    skip = NOT_CONFIG | (set() if optimizer == "muon" else set(MUON_ONLY))
    return config | {k: v for k, v in sorted(flags.items()) if k not in skip}


def read_run(path: Path, metric: str) -> Run:
    meta = _read_meta(path)
    rows = [r for r in metrics.read(path / "metrics.csv") if r.get("val_loss") is not None]
    if not rows:
        raise UserError(f"{path}/metrics.csv has no evaluated val loss: train it first")
    value = rows[-1]["best_val_loss" if metric == "best_val_loss" else "val_loss"]
    if value is None or not math.isfinite(value):
        raise UserError(f"{path}: its {metric} is {value} (the run diverged); leave it out")
    data = {"mode": meta["train_config"].get("mode"),
            "vocab_size": meta["model_config"].get("vocab_size")}  # fmt: skip
    data |= meta.get("data") or {}
    return Run(path, int(meta["train_config"]["seed"]), run_config(meta), data, rows, value)


def load_runs(paths: tuple[Path, ...], metric: str) -> list[Run]:
    if not paths:
        raise UserError("give at least two train run or sweep directories to compare")
    sources: dict[Path, tuple[Path, Path]] = {}  # resolved run dir -> (dir, argument)
    for p in paths:
        for d in run_dirs(p):
            if d.resolve() in sources:
                _, given = sources[d.resolve()]
                raise UserError(f"{d} is given twice (from {given} and from {p}): "
                                "give each run once")  # fmt: skip
            sources[d.resolve()] = (d, p)
    dirs = [d for d, _ in sources.values()]
    runs = [read_run(d, metric) for d in dirs]
    first = runs[0]
    for r in runs[1:]:
        differ = [k for k in sorted(first.data.keys() | r.data.keys())
                  if first.data.get(k) != r.data.get(k)]  # fmt: skip
        if differ:
            k = differ[0]
            raise UserError(
                f"{first.path} and {r.path} measure val loss on different data ({k} "
                f"{first.data.get(k)} vs {r.data.get(k)}): their losses are not comparable"
            )
    return runs


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs of one configuration together, in the order first given, named A, B, ...; each
    label lists only the keys on which the configurations differ."""
    keyed: dict[bytes, list[Run]] = {}
    for r in runs:
        keyed.setdefault(orjson.dumps(r.config, option=orjson.OPT_SORT_KEYS), []).append(r)
    configs = [members[0].config for members in keyed.values()]
    keys = sorted({k for c in configs for k in c})
    differ = [k for k in keys if len({orjson.dumps(c[k]) for c in configs if k in c}) > 1]
    if len(keyed) > len(string.ascii_uppercase):
        raise UserError(f"the runs form {len(keyed)} configurations; compare at most 26")
    return [
        Group(name, ", ".join(f"{k} {_fmt(members[0].config[k])}" for k in differ
                              if k in members[0].config),
              members[0].config, members)
        for name, members in zip(string.ascii_uppercase, keyed.values(), strict=False)
    ]  # fmt: skip


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_groups(groups: list[Group], metric: str) -> None:
    """What makes a comparison meaningless is refused before any test is run."""
    if len(groups) < 2:
        n = len(groups[0].runs)
        raise UserError(f"all {n} runs share one configuration, so there is nothing to compare; "
                        "add runs of another configuration")  # fmt: skip
    for g in groups:
        if len(g.runs) < 2:
            raise UserError(
                f"group {g.name} ({g.label}) has 1 seed ({g.runs[0].path}); a test across seeds "
                "needs at least 2 per configuration: add runs with other --seed values"
            )
        by_seed: dict[int, Run] = {}
        for r in g.runs:
            if r.seed in by_seed:
                raise UserError(f"{by_seed[r.seed].path} and {r.path} are the same configuration "
                                f"and seed {r.seed}: give one of them")  # fmt: skip
            by_seed[r.seed] = r
        ends = {r.rows[-1]["iter"] for r in g.runs}
        if len(ends) > 1 and not g.config.get("early_stopping_patience"):
            early = min(g.runs, key=lambda r: r.rows[-1]["iter"])
            raise UserError(
                f"{early.path} ends at step {early.rows[-1]['iter']}, others of group {g.name} "
                f"at {max(ends)}: its {metric} is not measured at the same point; finish it "
                "with train --resume or leave it out"
            )


def welch(a: list[float], b: list[float]) -> dict[str, float]:
    """Welch's two-sided t-test of mean(a) = mean(b), with a 95% interval of the difference
    and Cohen's d over the average of the two variances."""
    from scipy import stats

    test = stats.ttest_ind(a, b, equal_var=False)
    low, high = test.confidence_interval(0.95)
    spread = math.sqrt((statistics.variance(a) + statistics.variance(b)) / 2)
    diff = statistics.fmean(a) - statistics.fmean(b)
    return {"diff": diff, "ci95": [float(low), float(high)], "t": float(test.statistic),
            "df": float(test.df), "p": float(test.pvalue),
            "cohen_d": diff / spread if spread > 0 else _no_spread(diff)}  # fmt: skip


def _no_spread(diff: float) -> float:
    """Cohen's d of two groups that each repeat one value: infinite, or undefined if equal."""
    return math.copysign(math.inf, diff) if diff else math.nan


def summarize(groups: list[Group], metric: str, data: dict[str, Any]) -> dict[str, Any]:
    """Groups, their statistics and every pair's test, as compare.json holds them (JSON has
    no nan or inf: they are written as null)."""
    return {
        "metric": metric,
        "groups": [
            {"name": g.name, "label": g.label, "config": g.config, "n": len(g.runs),
             "mean": statistics.fmean(g.values), "sd": statistics.stdev(g.values),
             "runs": [{"path": str(r.path), "seed": r.seed, metric: r.value} for r in g.runs]}
            for g in groups
        ],
        "tests": [{"a": a.name, "b": b.name, "test": "welch", **welch(a.values, b.values)}
                  for a, b in itertools.combinations(groups, 2)],
        "data": data,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
    }  # fmt: skip


def curves(group: Group) -> tuple[list[int], list[float], list[float]]:
    """The group's val loss at every step all its runs evaluated: mean and sd over seeds."""
    per_run = [{r["iter"]: r["val_loss"] for r in run.rows} for run in group.runs]
    steps = sorted(set.intersection(*(set(c) for c in per_run)))
    values = [[c[s] for c in per_run] for s in steps]
    return steps, [statistics.fmean(v) for v in values], [statistics.stdev(v) for v in values]


def over(data: dict[str, Any]) -> str:
    """What the val loss averages over, as a label: " over assistant tokens" for chat runs
    (their loss counts the replies only), else nothing."""
    loss_over = data.get("loss_over", "all tokens")
    return "" if loss_over == "all tokens" else f" over {loss_over}"


def plot(path: Path, groups: list[Group], metric: str, data: dict[str, Any]) -> None:
    """Each group's mean val curve with a ± 1 sd band over its seeds (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for g in groups:
        steps, mean, sd = curves(g)
        line = ax.plot(steps, mean, label=f"{g.name}: {g.label} ({len(g.runs)} seeds)",
                       marker="." if len(steps) < 30 else None)[0]  # fmt: skip
        ax.fill_between(steps, [m - s for m, s in zip(mean, sd, strict=True)],
                        [m + s for m, s in zip(mean, sd, strict=True)],
                        color=line.get_color(), alpha=0.2, linewidth=0)  # fmt: skip
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"val loss{over(data)} (mean ± sd over seeds)")
    ax.set_title(f"compared on {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    fileio.atomic_write_bytes(path, buf.getvalue())


def report(result: dict[str, Any]) -> str:
    """The printed table: one line per group, then one per pair."""
    metric = result["metric"]
    label = f"{metric}{over(result['data'])} mean ± sd"
    lines = [f"{'group':<6} {'seeds':>5}  {label:>26}  configuration"]
    for g in result["groups"]:
        lines.append(f"{g['name']:<6} {g['n']:>5}  {g['mean']:>15.4f} ± {g['sd']:<8.4f}  "
                     f"{g['label']}")  # fmt: skip
    lines.append("Welch's t-test, two-sided (p per pair, not corrected for the number of pairs):")
    for t in result["tests"]:
        lines.append(
            f"  {t['a']} - {t['b']}: {t['diff']:+.4f} (95% CI {t['ci95'][0]:+.4f} to "
            f"{t['ci95'][1]:+.4f}), t = {t['t']:.2f}, df = {t['df']:.1f}, p = {t['p']:.2g}, "
            f"Cohen's d = {t['cohen_d']:+.2f}{_lower(t)}"
        )
    return "\n".join(lines)


def _lower(test: dict[str, Any]) -> str:
    if test["diff"] == 0:
        return ""
    return f"; {test['b'] if test['diff'] > 0 else test['a']} is lower"


def run(cfg: CompareConfig) -> dict[str, Any]:
    if cfg.out.exists() and not cfg.out.is_dir():
        raise UserError(f"--out {cfg.out} is an existing file; choose a directory")
    runs = load_runs(cfg.paths, cfg.metric)
    groups = group_runs(runs)
    check_groups(groups, cfg.metric)
    result = summarize(groups, cfg.metric, runs[0].data)
    print(report(result))
    cfg.out.mkdir(parents=True, exist_ok=True)
    fileio.atomic_write_bytes(cfg.out / "compare.json", fileio.json_bytes(result))
    plot(cfg.out / "compare.png", groups, cfg.metric, result["data"])
    print(f"wrote {cfg.out / 'compare.json'} and {cfg.out / 'compare.png'}")
    return result
