"""Sweeps: declare (model variants x epoch budgets x learning rates), plan the runs, launch them through the
pretraining job, collect each run's result into the sweep's table of runs.

A sweep is a config file like every job's (`--config=sweep_toy:smoke`, `keras_nfnet.jobs.defaults.sweep` lists its
fields). The sweep owns three fields of every run's pretraining config (`variant`, `epochs`, `base_learning_rate`);
everything else comes from the base `pretrain_config` (a config file or a shipped config's name) plus the sweep's
`shared` fields, and each run trains in `<workdir>/runs/<run_id>`.

Planning is a pure function of the spec and the results so far (`plan_sweep`), which makes the sweep resumable
(finished runs are in the table and are never re-planned; an interrupted run is planned again with the same
run_id and directory, and the job resumes it from its last checkpoint) and lets the same plan be run one run
after another here (`run_sweep`) or as independent cluster jobs (`PlannedRun.command`, then `collect`). Runs are
launched as `python -m keras_nfnet.jobs.pretrain` with the interpreter running the sweep, so an installed package
runs sweeps from any directory.
"""
import concurrent.futures
import dataclasses
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

from keras_nfnet import storage
from keras_nfnet.jobs import config as config_lib
from keras_nfnet.scaling import lr_search
from keras_nfnet.scaling.results import ResultsStore, RunResult

# Fields of the pretraining config that the sweep sets per run; `shared` may not override them.
OWNED_FIELDS = ("variant", "epochs", "base_learning_rate")
RESULTS_FILE = "runs.jsonl"


@dataclasses.dataclass
class SweepSpec:
    name: str
    pretrain_config: str  # base run config: a config file (path.py[:arg]) or a shipped config's name
    variants: List[str]  # smallest model first: the smart LR search hands best LRs up the ladder
    epoch_budgets: List[float]
    lr_grid: List[float]  # values of the runs' base_learning_rate (per 256 examples), a factor-2 grid
    initial_lr: float  # where the smart search of the first (model, budget) starts
    lr_search: str = "smart"  # "smart" (the paper's neighbour search) or "grid" (every LR for every cell)
    shared: Dict[str, object] = dataclasses.field(default_factory=dict)  # pretraining fields of every run
    compute: str = "flops"  # x-axis of the fits: "flops" or "device_hours"
    size: str = "params"  # model size axis of the allocation fit: "params" or "macs_per_image"
    irreducible: bool = False  # fit the loss frontier with an irreducible term
    n_bootstrap: int = 1000
    parallel_runs: int = 1  # runs launched at once by `run_sweep` (e.g. 2 on a 2-core machine: small runs use ~1 core)

    def validate(self) -> "SweepSpec":
        from keras_nfnet.architectures import known_names
        from keras_nfnet.jobs import defaults
        from keras_nfnet.scaling.fit import COMPUTE_AXES, SIZE_AXES

        problems = []
        self.variants, self.shared = list(self.variants), dict(self.shared)
        unknown = [v for v in self.variants if v not in known_names()]
        if not self.variants or unknown:
            problems.append(f"variants must be a non-empty list of known variants; unknown {unknown}, known "
                            f"{', '.join(known_names())}")
        if len(set(self.variants)) != len(self.variants):
            problems.append(f"variants repeat: {self.variants}")
        if not self.epoch_budgets or any(not (isinstance(e, (int, float)) and e > 0) for e in self.epoch_budgets):
            problems.append(f"epoch_budgets must be positive numbers, got {self.epoch_budgets}")
        elif len(set(self.epoch_budgets)) != len(self.epoch_budgets):
            problems.append(f"epoch_budgets repeat: {self.epoch_budgets}")
        try:
            lr_search.check_grid(self.lr_grid)
        except ValueError as e:
            problems.append(f"lr_grid: {e}")
        if not (isinstance(self.initial_lr, (int, float)) and self.initial_lr > 0):
            problems.append(f"initial_lr must be a positive number, got {self.initial_lr!r}")
        if not (isinstance(self.parallel_runs, int) and self.parallel_runs >= 1):
            problems.append(f"parallel_runs must be an integer >= 1, got {self.parallel_runs!r}")
        if self.lr_search not in lr_search.SEARCH_MODES:
            problems.append(f"lr_search must be one of {lr_search.SEARCH_MODES}, got {self.lr_search!r}")
        if self.compute not in COMPUTE_AXES:
            problems.append(f"compute must be one of {COMPUTE_AXES}, got {self.compute!r}")
        if self.size not in SIZE_AXES:
            problems.append(f"size must be one of {SIZE_AXES}, got {self.size!r}")
        bad = sorted(set(self.shared) - set(defaults.pretrain()))
        if bad:
            problems.append(f"shared has unknown pretraining config field(s) {bad}")
        owned = sorted(set(self.shared) & set(OWNED_FIELDS))
        if owned:
            problems.append(f"shared may not set {owned}: the sweep sets them per run")
        if self.shared.get("max_steps"):
            problems.append("shared may not set max_steps: a run stopped early has no final held-out loss; "
                            "use smaller epoch_budgets instead")
        try:
            self.pretrain_config = config_lib.resolve(self.pretrain_config)
        except ValueError as e:
            problems.append(f"pretrain_config: {e}")
        if problems:
            raise ValueError(f"bad sweep {self.name!r}:\n  - " + "\n  - ".join(problems))
        self.epoch_budgets = sorted(float(e) for e in self.epoch_budgets)
        self.lr_grid = lr_search.check_grid(self.lr_grid)
        return self


def load_sweep(spec: str, **overrides) -> SweepSpec:
    """The validated SweepSpec of a sweep config ('path.py[:arg]' or a shipped name), `overrides` applied."""
    from keras_nfnet.jobs import defaults

    return from_config(config_lib.load(spec, **overrides), defaults)


def from_config(config, defaults=None) -> SweepSpec:
    """The validated SweepSpec of a sweep ConfigDict (keras_nfnet.jobs.defaults.sweep's fields)."""
    from keras_nfnet.jobs import defaults as defaults_lib

    problems = config_lib.check_fields(config, (defaults or defaults_lib).sweep())
    if problems:
        raise ValueError("bad sweep config:\n  - " + "\n  - ".join(problems))
    return SweepSpec(**config_lib.as_dict(config)).validate()


def run_id(variant: str, epochs: float, lr: float) -> str:
    return f"{variant}-e{epochs:g}-lr{lr:g}"


@dataclasses.dataclass
class PlannedRun:
    run_id: str
    variant: str
    epochs: float
    learning_rate: float
    run_dir: str
    overrides: Dict[str, object]  # every pretraining config override of this run
    reason: str  # why this LR (where the smart search started)

    def command(self, spec: SweepSpec, python: str = "python") -> List[str]:
        """The pretraining command of this run (what a cluster job runs, from any directory)."""
        return ([python, "-m", "keras_nfnet.jobs.pretrain", f"--config={spec.pretrain_config}"] +
                [f"--config.{k}={_fmt(v)}" for k, v in self.overrides.items()] + [f"--workdir={self.run_dir}"])

    def job_command(self, sweep_args: List[str], workdir: str, python: str = "python") -> List[str]:
        """The cluster job of this run: the pretraining command wrapped so that a divergence is recorded.
        `sweep_args`: the --config flag (and its overrides) that name the sweep."""
        return [python, "-m", "keras_nfnet.jobs.sweep", *sweep_args, f"--workdir={workdir}", "--mode=run_one",
                f"--run_id={self.run_id}"]


@dataclasses.dataclass
class Plan:
    ready: List[PlannedRun]  # runs whose learning rate is decided and that have no result yet
    waiting: List[Tuple[str, float, str]]  # (variant, epochs, why) cells that wait for another cell's search
    finished: Dict[Tuple[str, float], Optional[float]]  # cells whose search is complete -> best LR
    runs_done: int

    @property
    def complete(self) -> bool:
        return not self.ready and not self.waiting


def tried_table(results: List[RunResult]) -> Dict[Tuple[str, float], Dict[float, Optional[float]]]:
    """(variant, epochs) -> {learning_rate: held-out loss (None if diverged)} from the store's rows."""
    table: Dict[Tuple[str, float], Dict[float, Optional[float]]] = {}
    for r in results:
        table.setdefault((r.variant, _key(r.epochs)), {})[float(r.learning_rate)] = (
            r.heldout_loss if r.ok else None)
    return table


def plan_sweep(spec: SweepSpec, results: List[RunResult], workdir: str) -> Plan:
    """What to run next, given the results so far. Cells are visited smallest model first, shortest budget first."""
    workdir = storage.abspath(workdir)  # runs may be launched from another directory
    table = tried_table(results)
    ready, waiting, finished = [], [], {}
    for variant in spec.variants:
        for epochs in spec.epoch_budgets:
            tried = table.get((variant, _key(epochs)), {})
            if spec.lr_search == "grid":
                start, why = spec.initial_lr, "full grid"
            else:
                start, why = lr_search.start_learning_rate(variant, epochs, spec.variants, spec.epoch_budgets,
                                                           finished, spec.initial_lr)
            if start is None:
                waiting.append((variant, epochs, why))
                continue
            todo = lr_search.next_learning_rates(spec.lr_grid, tried, start, spec.lr_search)
            if not todo:
                finished[(variant, epochs)] = lr_search.best_learning_rate(tried)
                continue
            for lr in todo:
                rid = run_id(variant, epochs, lr)
                overrides = {**spec.shared, "variant": variant, "epochs": epochs, "base_learning_rate": lr}
                ready.append(PlannedRun(rid, variant, epochs, lr, storage.join(workdir, "runs", rid), overrides,
                                        f"start {why}"))
    return Plan(ready, waiting, finished, len(results))


def run_config(spec: SweepSpec, variant: str, epochs: float, lr: float):
    """The full pretraining config (a ConfigDict) of one run; raises ValueError naming a bad field."""
    return config_lib.load(spec.pretrain_config, **spec.shared, variant=variant, epochs=float(epochs),
                           base_learning_rate=float(lr))


def estimate(spec: SweepSpec) -> List[dict]:
    """Per cell: steps and training FLOPs of one run, and how many runs its LR search takes (fewest, most).

    Needs the corpus (for its size and class count); raises FileNotFoundError when it is not there yet.
    """
    from keras_nfnet.data.corpus import load_metadata
    from keras_nfnet.architectures import count_macs, get_row

    n_grid = len(spec.lr_grid)
    out = []
    for variant in spec.variants:
        for epochs in spec.epoch_budgets:
            cfg = run_config(spec, variant, epochs, spec.initial_lr)
            if not storage.exists(storage.join(cfg.corpus, "metadata.json")):
                raise FileNotFoundError(f"corpus {cfg.corpus!r} is not there yet (no metadata.json); make it first")
            info = load_metadata(cfg.corpus)
            n = info.split(cfg.train_split).num_examples
            size = cfg.image_size or get_row(variant).train_image_size
            steps = max(1, math.ceil(epochs * n / cfg.global_batch_size))
            flops = 6.0 * count_macs(variant, size, num_classes=info.num_classes) * steps * cfg.global_batch_size
            lo, hi = (n_grid, n_grid) if spec.lr_search == "grid" else (min(3, n_grid), n_grid)
            out.append({"variant": variant, "epochs": epochs, "steps": steps, "flops_per_run": flops,
                        "runs_min": lo, "runs_max": hi})
    return out


def describe_plan(spec: SweepSpec, workdir: str) -> str:
    """The dry run: what the sweep is, what has run, what runs next, and what the whole sweep will cost."""
    results = ResultsStore(storage.join(workdir, RESULTS_FILE)).load()
    plan = plan_sweep(spec, results, workdir)
    lines = [f"sweep {spec.name}: {len(spec.variants)} variants x {len(spec.epoch_budgets)} epoch budgets, "
             f"{spec.lr_search} LR search over {len(spec.lr_grid)} LRs",
             f"  variants {', '.join(spec.variants)}; budgets {', '.join(f'{e:g}' for e in spec.epoch_budgets)}; "
             f"LR grid {', '.join(f'{v:g}' for v in spec.lr_grid)} (trainer base_learning_rate)",
             f"  workdir {workdir}: {len(results)} runs done, {len(plan.finished)} cells finished",
             f"runs ready now ({len(plan.ready)}):"]
    for r in plan.ready:
        lines.append(f"  {r.run_id:<22} {r.reason}")
        lines.append(f"    {shlex.join(r.command(spec))}")
    if plan.waiting:
        lines.append(f"cells waiting for another cell's LR search ({len(plan.waiting)}):")
        lines += [f"  {v} at {e:g} epochs: {why}" for v, e, why in plan.waiting]
    try:
        cells = estimate(spec)
    except FileNotFoundError as e:
        lines.append(f"no cost estimate: {e}")
        return "\n".join(lines)
    rate = _observed_flops_per_device_second(results)
    lines.append("cost per cell (one run x the LR search's fewest..most runs):")
    lines.append(f"  {'variant':<8}{'epochs':>8}{'steps':>8}{'FLOPs/run':>12}  runs")
    lo = hi = 0.0
    for c in cells:
        lines.append(f"  {c['variant']:<8}{c['epochs']:>8g}{c['steps']:>8}{c['flops_per_run']:>12.3g}  "
                     f"{c['runs_min']}..{c['runs_max']}")
        lo += c["flops_per_run"] * c["runs_min"]
        hi += c["flops_per_run"] * c["runs_max"]
    lines.append(f"total training compute: {lo:.3g} .. {hi:.3g} FLOPs")
    if rate:
        lines.append(f"at the {rate:.3g} FLOP/s per device seen in this sweep's finished runs: "
                     f"{lo / rate / 3600:.3g} .. {hi / rate / 3600:.3g} device-hours (plus each run's start-up and evaluation)")
    return "\n".join(lines)


def _observed_flops_per_device_second(results: List[RunResult]) -> Optional[float]:
    flops = sum(r.flops for r in results if r.device_hours and r.device_hours > 0)
    hours = sum(r.device_hours for r in results if r.device_hours and r.device_hours > 0)
    return flops / (hours * 3600) if hours > 0 else None


Launcher = Callable[[PlannedRun, SweepSpec], None]


def launch_subprocess(run: PlannedRun, spec: SweepSpec) -> None:
    """Runs the pretraining job for `run` in a child process, its output appended to <run_dir>/train.log.

    The job resumes from the run's newest checkpoint if there is one. A diverged run (exit status 3) is
    marked as such and counts as tried; a user error (exit status 2: a bad record, a damaged corpus) is raised as a
    ValueError with the run's one-line message; any other failure stops the sweep with the end of the log.
    """
    from keras_nfnet.scaling import run_summary

    log_path = storage.join(run.run_dir, "train.log")
    # The child writes its output to a local file; in a bucket (no append) the log is uploaded after the run.
    local_log = log_path
    if storage.is_remote(log_path):
        fd, local_log = tempfile.mkstemp(prefix="sweep-run-", suffix=".log")
        os.close(fd)
    storage.makedirs(run.run_dir)
    with open(local_log, "a", encoding="utf-8") as log:
        proc = subprocess.run(run.command(spec, sys.executable), stdout=log, stderr=subprocess.STDOUT)
    with open(local_log, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if local_log != log_path:
        earlier = storage.read_text(log_path) if storage.exists(log_path) else ""
        storage.write_atomic(log_path, earlier + text)
        os.remove(local_log)
    tail = "".join(text.splitlines(keepends=True)[-25:])
    if proc.returncode == 3:
        run_summary.mark_diverged(run.run_dir, tail)
        return
    if proc.returncode == 2:  # a user error (damaged corpus, bad record, bad config): re-running cannot help
        errors = [line.strip() for line in tail.splitlines() if line.startswith("error: ")]
        raise ValueError(f"run {run.run_id}: {errors[-1][len('error: '):] if errors else 'exit status 2'} "
                         f"(log: {log_path})")
    if proc.returncode != 0:
        what = "was preempted (SIGTERM; its checkpoint is saved)" if proc.returncode in (143, -15) else (
            f"failed (exit status {proc.returncode})")
        raise RuntimeError(f"run {run.run_id} {what}; the end of {log_path}:\n{tail}\nRun the sweep again to go "
                           f"on: finished runs are kept and this run resumes from its last checkpoint.")


def run_sweep(spec: SweepSpec, workdir: str, launcher: Launcher = launch_subprocess,
              collector: Optional[Callable[[PlannedRun, SweepSpec], RunResult]] = None,
              max_runs: Optional[int] = None, log: Callable[[str], None] = print) -> Plan:
    """Runs planned runs until the sweep is complete (or `max_runs` were launched), `spec.parallel_runs` at a
    time. Each finished run's row is appended as it ends, so the plan (and the smart search) moves on while other
    runs are still going; the first failure stops new launches, lets the others finish, then is raised."""
    from keras_nfnet.scaling import run_summary

    collector = collector or run_summary.collect_run
    store = ResultsStore(storage.join(workdir, RESULTS_FILE))
    cells = len(spec.variants) * len(spec.epoch_budgets)
    launched, started, seen = 0, time.time(), set()
    in_flight: Dict[concurrent.futures.Future, Tuple[PlannedRun, float]] = {}
    failure = None

    def execute(run):
        if not run_summary.is_finished(run.run_dir):  # a finished run whose row was not written is not redone
            launcher(run, spec)
        return collector(run, spec)

    with concurrent.futures.ThreadPoolExecutor(max_workers=spec.parallel_runs) as pool:
        while True:
            plan = plan_sweep(spec, store.load(), workdir)
            running = {run.run_id for run, _ in in_flight.values()}
            ready = [r for r in plan.ready if r.run_id not in running]
            while (failure is None and ready and len(in_flight) < spec.parallel_runs
                   and (max_runs is None or launched < max_runs)):
                run = ready.pop(0)
                if run.run_id in seen:
                    failure = RuntimeError(f"run {run.run_id} was recorded but is planned again: the row's variant, "
                                           f"epochs or learning rate differ from the sweep's; check {store.path}")
                    break
                seen.add(run.run_id)
                log(f"[sweep {spec.name}] run {plan.runs_done + len(in_flight) + 1}: {run.run_id} ({run.reason}); "
                    f"{len(plan.finished)}/{cells} cells done, {len(in_flight) + 1} running")
                in_flight[pool.submit(execute, run)] = (run, time.time())
                launched += 1
            if not in_flight:
                break
            done, _ = concurrent.futures.wait(in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                run, t0 = in_flight.pop(future)
                try:
                    result = future.result()
                except Exception as e:  # noqa: BLE001 -- re-raised once the other runs have ended
                    failure = failure or e
                    continue
                store.append(result)
                log(f"[sweep {spec.name}] {run.run_id}: held-out loss {_fmt_loss(result)}, {result.steps} steps, "
                    f"{result.flops:.3g} FLOPs, {time.time() - t0:.0f} s (sweep {time.time() - started:.0f} s so far)")
    if failure is not None:
        raise failure
    if plan.complete:
        log(f"[sweep {spec.name}] complete: {plan.runs_done} runs, {cells} cells")
    elif not plan.ready:
        raise RuntimeError(f"sweep {spec.name} is stuck: cells wait on others that cannot finish: {plan.waiting}")
    return plan


def run_one(spec: SweepSpec, workdir: str, run_id_: str, launcher: Launcher = launch_subprocess) -> None:
    """Runs one planned run (a cluster job); its row is added later by `collect`, which avoids many jobs appending
    to one file. A run that is already finished is not run again."""
    from keras_nfnet.scaling import run_summary

    plan = plan_sweep(spec, ResultsStore(storage.join(workdir, RESULTS_FILE)).load(), workdir)
    runs = {r.run_id: r for r in plan.ready}
    if run_id_ not in runs:
        raise ValueError(f"run {run_id_!r} is not runnable now (finished, or waiting for another cell's LR search); "
                         f"runnable: {', '.join(runs) or 'none'}")
    if not run_summary.is_finished(runs[run_id_].run_dir):
        launcher(runs[run_id_], spec)


def collect(spec: SweepSpec, workdir: str, log: Callable[[str], None] = print) -> int:
    """Adds to the store every run directory under <workdir>/runs that finished but has no row yet (after cluster
    jobs). Returns how many rows were added."""
    from keras_nfnet.scaling import run_summary

    store = ResultsStore(storage.join(workdir, RESULTS_FILE))
    have = store.finished_ids()
    added = 0
    for run in plan_sweep(spec, store.load(), workdir).ready:
        if run.run_id in have or not run_summary.is_finished(run.run_dir):
            continue
        store.append(run_summary.collect_run(run, spec))
        added += 1
        log(f"collected {run.run_id}")
    return added


def _key(epochs: float) -> float:
    return round(float(epochs), 9)


def _fmt(v) -> str:
    # repr keeps every digit of a float, so the run's recorded epochs and LR equal the sweep's exactly.
    return repr(v) if isinstance(v, float) else str(v).lower() if isinstance(v, bool) else str(v)


def _fmt_loss(r: RunResult) -> str:
    return f"{r.heldout_loss:.4f}" if r.ok else "diverged"


def format_commands(runs: List[PlannedRun], sweep_args: List[str], workdir: str, python: str = "python") -> str:
    """One cluster job per line (each runs from any directory where the package is installed)."""
    return "\n".join(shlex.join(r.job_command(sweep_args, storage.abspath(workdir), python)) for r in runs)

