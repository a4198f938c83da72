"""The paper-budget ticket table from one GPU call (issue 25): `gemdeploy mine` processes side by side on one GPU.

    # on the GPU machine (no registry), repository root, wheels/ from benchmarks/gpu_wheels.sh carried along:
    bash benchmarks/gpu_tickets.sh OUT          # -> OUT/gpu-tickets.json, OUT/BENCHMARKS-gpu-tickets.md, OUT/gpu-tickets.log
    # back here: keep the JSON (the next call reads it and skips every finished run), render the section:
    cp OUT/gpu-tickets.json benchmarks/results/gpu-tickets.json
    .venv/bin/python -m benchmarks.gpu_tickets --report-only      # -> the "gpu-tickets" section of BENCHMARKS.md
    # the same machinery at toy size on the CPU (tests/test_gpu_tickets.py runs it):
    .venv/bin/python -m benchmarks.gpu_tickets --smoke --runs /tmp/gt --out /tmp/gt.json

resnet20 / mnist5k at 1.44% and 0.59% density, 150 epochs training every ticket, 3 seeds of each variant
(VARIANTS): Gem-Miner 150 + 150 with the authors' ticket lr 0.01 and with IMP's round lr 0.1 (`--finetune-lr 0.1`),
IMP and IMP-FT at 10 and at 30 epochs per round, SynFlow, SNIP, GraSP, magnitude, Smart-Ratio, random. Every job is
a real `gemdeploy mine` process (its command is in the table). On a GPU the steps of these small runs are bound by
kernel launches, so many processes share the GPU well: the first call measures the throughput (epochs finished per
second, over all processes) at 4, 8 and 16 processes on the first jobs and keeps the fastest (``--procs`` sets it).

Time box: ``--budget`` seconds (default 420, inside an 8-minute call with start-up and install). A job starts only
while its expected time (from the epochs per second measured so far) fits in what is left; at the deadline every
running process gets SIGINT (gemdeploy's interrupt: the epoch's checkpoint stays) and the call ends. Finished jobs
are recorded in the JSON, which is the state a second call starts from (the run directories stay on the GPU
machine, which is given back after each call: a job not finished in one call starts again in the next). The IMP
runs at 0.59% continue the levels of the same seed's 1.44% run (`--imp-from`) when that one finished in the same call.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import typer

from benchmarks.report import ROOT, finished_summary, machine, markdown_table, write_section
from benchmarks.tickets import aggregate, summary_record

SECTION = "gpu-tickets"
STATE = ROOT / "benchmarks" / "results" / "gpu-tickets.json"
PROC_LEVELS = (4, 8, 16)
SIGINT_GRACE_S = 40.0  # a process stops at its next epoch boundary after SIGINT


@dataclass(frozen=True)
class Variant:
    label: str
    method: str
    round_epochs: int | None = None  # IMP: epochs per round (else the settings' mining epochs)
    args: tuple[str, ...] = ()


VARIANTS = (
    Variant("gem-miner", "gem-miner"),
    Variant("gem-miner, ticket lr 0.1", "gem-miner", args=("--finetune-lr", "0.1")),
    Variant("imp, 10 per round", "imp", 10), Variant("imp, 30 per round", "imp", 30),
    Variant("imp-ft, 10 per round", "imp-ft", 10), Variant("imp-ft, 30 per round", "imp-ft", 30),
    Variant("synflow", "synflow"), Variant("snip", "snip"), Variant("grasp", "grasp"),
    Variant("magnitude", "magnitude"), Variant("smart-ratio", "smart-ratio"), Variant("random", "random"),
)


@dataclass(frozen=True)
class Settings:
    model: str = "resnet20"
    data: str = "mnist5k"
    densities: tuple[float, ...] = (0.0144, 0.0059)
    seeds: int = 3
    epochs: int = 150  # Gem-Miner's mining
    finetune_epochs: int = 150
    imp_round_epochs: tuple[int, int] = (10, 30)
    device: str = "cuda"
    cuda_graph: bool = False
    budget_s: float = 420.0
    warm_s: float = 25.0  # calibration: process start-up, not counted
    measure_s: float = 35.0  # calibration: the window epochs are counted in
    proc_levels: tuple[int, ...] = PROC_LEVELS
    only: tuple[str, ...] = ()  # a subset of VARIANTS' labels (the smoke run)
    smoke: bool = False


# Toy sizes: every code path (calibration, dependencies, time box, reuse, rendering) on the CPU in a few minutes.
SMOKE = dict(model="lenet300", data="digits", densities=(0.5, 0.41), seeds=1, epochs=2, finetune_epochs=1,
             imp_round_epochs=(1, 2), device="cpu", budget_s=400.0, warm_s=8.0, measure_s=8.0, proc_levels=(1, 2),
             only=("gem-miner", "gem-miner, ticket lr 0.1", "imp, 10 per round", "imp-ft, 30 per round", "random"),
             smoke=True)


def variants(s: Settings) -> list[Variant]:
    short, long = s.imp_round_epochs
    out = []
    for v in VARIANTS:
        if s.only and v.label not in s.only:
            continue
        if v.round_epochs is not None:
            e = short if v.round_epochs == 10 else long
            v = replace(v, label=f"{v.method}, {e} per round", round_epochs=e)
        out.append(v)
    return out


@dataclass
class Job:
    variant: Variant
    density: float
    seed: int
    out: Path
    source: "Job | None" = None  # IMP at the lower density: the higher density's run, whose levels it continues

    @property
    def key(self) -> str:
        return f"{self.variant.label}|{self.density:g}|{self.seed}"

    def epochs(self, s: Settings) -> int:
        return self.variant.round_epochs or s.epochs

    def continues(self) -> bool:
        """IMP at the lower density: the higher density's levels are on this machine to continue from."""
        return self.source is not None and (self.source.out / "mask.safetensors").is_file()

    def expected_epochs(self, s: Settings) -> int:
        """Training epochs this job runs (what its duration is estimated from)."""
        from gemdeploy.mine.methods.imp import level_counts

        if self.variant.method in ("imp", "imp-ft"):
            rounds = len(level_counts(10**6, self.density)) - 1
            if self.continues():
                rounds -= len(level_counts(10**6, self.source.density)) - 1
            return rounds * self.epochs(s) + s.finetune_epochs
        return (s.epochs if self.variant.method == "gem-miner" else 0) + s.finetune_epochs

    def args(self, s: Settings, imp_from: Path | None = None) -> list[str]:
        a = ["--model", s.model, "--data", s.data, "--method", self.variant.method,
             "--sparsity", f"{round(1 - self.density, 10):g}", "--epochs", str(self.epochs(s)),
             "--finetune-epochs", str(s.finetune_epochs), "--seed", str(self.seed), "--device", s.device,
             *self.variant.args]
        if s.cuda_graph:
            a.append("--cuda-graph")
        if imp_from is not None:
            a += ["--imp-from", str(imp_from)]
        return a

    def command(self, s: Settings) -> str:
        return "gemdeploy mine " + " ".join(shlex.quote(x) for x in self.args(s)) + " --out RUN"


def plan(s: Settings, runs: Path) -> list[Job]:
    jobs = []
    for seed in range(s.seeds):
        for v in variants(s):
            slug = v.label.replace(", ", "-").replace(" ", "-")
            by_density = {}
            for d in sorted(s.densities, reverse=True):  # the higher density first: the lower continues its levels
                job = Job(v, d, seed, runs / f"{slug}-d{d:.4f}-s{seed}")
                if v.method in ("imp", "imp-ft") and by_density:
                    job.source = by_density[max(by_density)]
                by_density[d] = job
                jobs.append(job)
    return jobs


# ------------------------------------------------------------------------------------------------- running
def log(msg: str) -> None:
    print(f"[gpu-tickets {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _epochs_done(job: Job) -> int:
    f = job.out / "metrics.jsonl"
    try:
        return sum(1 for _ in f.open()) if f.is_file() else 0
    except OSError:
        return 0


@dataclass
class Runner:
    s: Settings
    jobs: list[Job]
    runs: Path
    done: dict[str, dict]  # job key -> record
    procs: int | None  # fixed, or None: calibrate
    started: float = field(default_factory=time.monotonic)
    running: dict[str, tuple[Job, subprocess.Popen, float]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    interrupted: dict[str, int] = field(default_factory=dict)
    calibration: list[dict] = field(default_factory=list)
    levels: list[int] | None = None
    epoch_s: float | None = None  # wall seconds per epoch of one job at the chosen concurrency
    progress: tuple[float, int] | None = None  # (time, epochs) once warm, with a fixed --procs
    stopping: bool = False

    def left(self) -> float:
        return self.started + self.s.budget_s - time.monotonic()

    def total_epochs(self) -> int:
        return sum(_epochs_done(j) for j in self.jobs)

    def ready(self) -> list[Job]:
        out = []
        for j in self.jobs:
            if j.key in self.done or j.key in self.running or j.key in self.failed:
                continue
            source = j.source
            if source is not None and not j.continues() and source.key not in self.failed and (
                    source.key in self.running or source.key not in self.done):
                continue  # wait for the levels it continues (its source failed or finished elsewhere: it runs alone)
            out.append(j)
        # the longest first: IMP chains must start early to end inside the time box
        return sorted(out, key=lambda j: -j.expected_epochs(self.s))

    def fits(self, job: Job) -> bool:
        if self.epoch_s is None:
            return True
        return job.expected_epochs(self.s) * self.epoch_s + 20 < self.left()

    def start(self, job: Job) -> None:
        imp_from = job.source.out if job.continues() else None
        resume = (job.out / "config.json").is_file()
        args = ["mine", "--out", str(job.out), "--resume"] if resume else \
            ["mine", *job.args(self.s, imp_from), "--out", str(job.out)] + (["--overwrite"] if job.out.exists() else [])
        logs = self.runs / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        handle = open(logs / f"{job.out.name}.log", "a")
        # SIGINT back to its default in the child: started from a background job, this process may ignore it, and a
        # child that inherits that would never hear the time box
        proc = subprocess.Popen([sys.executable, "-m", "gemdeploy.cli", *args, "--quiet", "--json"],
                                stdout=handle, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        handle.close()
        self.running[job.key] = (job, proc, time.monotonic())
        log(f"start {job.key}{' (resume)' if resume else ''}{' --imp-from ' + imp_from.name if imp_from else ''}; "
            f"{len(self.running)} running, {self.left():.0f} s left")

    def reap(self) -> None:
        for key, (job, proc, t0) in list(self.running.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.running[key]
            summary = finished_summary(job.out)
            if code == 0 and summary is not None:
                self.done[key] = record(self.s, job, summary, time.monotonic() - t0)
                log(f"done  {key}: test {summary['test_acc']:.2%}, {time.monotonic() - t0:.0f} s")
            elif code == 130 or self.stopping:  # our SIGINT (during start-up Python dies of it: not 130)
                self.interrupted[key] = _epochs_done(job)
            else:
                tail = (self.runs / "logs" / f"{job.out.name}.log").read_text()[-400:].strip().splitlines()
                self.failed[key] = f"exit {code}: {tail[-1] if tail else ''}"
                log(f"FAILED {key}: {self.failed[key]}")

    def target_procs(self) -> int:
        """The concurrency: fixed, chosen by calibration, or the calibration's current level. Calibration is real
        work: each level runs its jobs for warm_s (start-up) + measure_s, counting the epochs all of them finish."""
        now = time.monotonic()
        if self.procs is not None:
            self._estimate_fixed(now)
            return self.procs
        if self.levels is None:
            pending = len(self.jobs) - len(self.done)
            self.levels = [p for p in self.s.proc_levels if p <= pending] or [min(self.s.proc_levels)]
        current = self.calibration[-1] if self.calibration else None
        if current is None or "rate" in current:
            measured = [c for c in self.calibration if "rate" in c]
            improving = len(measured) < 2 or measured[-1]["rate"] > 1.1 * measured[-2]["rate"]
            if len(measured) < len(self.levels) and improving:
                current = {"procs": self.levels[len(measured)], "from": now + self.s.warm_s}
                self.calibration.append(current)
            else:
                best = max(measured, key=lambda c: c["rate"])
                self.procs = best["procs"]
                log("calibration: " + ", ".join(f"{c['procs']} processes {c['rate']:.2f} epochs/s" for c in measured)
                    + f" -> {self.procs}")
                return self.procs
        if "epochs0" not in current:
            if now >= current["from"]:
                current["epochs0"], current["t0"] = self.total_epochs(), now
        elif now >= current["t0"] + self.s.measure_s:
            current["rate"] = (self.total_epochs() - current["epochs0"]) / (now - current["t0"])
            if current["rate"] > 0:
                self.epoch_s = current["procs"] / current["rate"]
            log(f"calibration: {current['procs']} processes: {current['rate']:.2f} epochs/s")
        return current["procs"]

    def _estimate_fixed(self, now: float) -> None:
        """Seconds per epoch of one job with a fixed --procs, from the epochs finished since the processes warmed."""
        if now - self.started < self.s.warm_s:
            return
        if self.progress is None:
            self.progress = (now, self.total_epochs())
            return
        t0, e0 = self.progress
        done = self.total_epochs() - e0
        if done > 0 and now - t0 >= self.s.measure_s:
            self.epoch_s = max(1, len(self.running)) * (now - t0) / done

    def stop_all(self) -> None:
        self.stopping = True
        for _, proc, _ in self.running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        end = time.monotonic() + SIGINT_GRACE_S
        while self.running and time.monotonic() < end:
            self.reap()
            time.sleep(0.5)
        for key, (job, proc, _) in list(self.running.items()):
            proc.kill()
            proc.wait()
            self.interrupted[key] = _epochs_done(job)
            del self.running[key]

    def loop(self, save) -> None:
        last_save = time.monotonic()
        while True:
            self.reap()
            if self.left() <= 0:
                log(f"time box reached: interrupting {len(self.running)} runs")
                self.stop_all()
                break
            target = self.target_procs()
            for job in self.ready():
                if len(self.running) >= target:
                    break
                if self.fits(job):
                    self.start(job)
            if not self.running and not any(self.fits(j) for j in self.ready()):
                break
            if time.monotonic() - last_save > 10:
                save()
                last_save = time.monotonic()
            time.sleep(1.0)
        save()


def record(s: Settings, job: Job, summary: dict, wall_s: float) -> dict:
    rec = summary_record(summary, s.model, s.data, job.variant.label, job.density, job.seed)
    rec.update(command=job.command(s), wall_s=round(wall_s, 1), settings_key=_settings_key(s))
    return rec


# ---------------------------------------------------------------------------------------------- reporting
def render(result: dict) -> str:
    s = result["settings"]
    lines = [f"## GPU tickets at the paper's budget: {s['model']} / {s['data']}, "
             + " and ".join(f"{d:.2%}" for d in s["densities"]) + " density", ""]
    if result.get("smoke"):
        lines += ["**Smoke run** (`--smoke`: toy sizes on the CPU; no figure below means anything).", ""]
    lines += [
        "Command (on a GPU machine without a registry, from the repository root with `wheels/` from "
        "`bash benchmarks/gpu_wheels.sh`): `bash benchmarks/gpu_tickets.sh OUT`, then back here `cp "
        "OUT/gpu-tickets.json benchmarks/results/gpu-tickets.json && .venv/bin/python -m benchmarks.gpu_tickets "
        "--report-only`. Each call keeps to an 8-minute box and skips every run an earlier call finished (the JSON "
        "is its state), so calling it again fills the table.", "",
        f"Every run is a `gemdeploy mine` process, {s['finetune_epochs']} epochs training the ticket; Gem-Miner "
        f"{s['epochs']} mining epochs; IMP and IMP-FT on their reference recipe with {s['imp_round_epochs'][0]} and "
        f"{s['imp_round_epochs'][1]} epochs per round (the reference: 160); every other ticket with the shared "
        "fine-tuning (lr 0.01; `gem-miner, ticket lr 0.1` is Gem-Miner's ticket trained at IMP's round lr, "
        f"`--finetune-lr 0.1`); {s['seeds']} seeds; batch 128. Test accuracy: mean ± standard deviation over the "
        "seeds that finished; time to ticket: mean wall time finding the mask, with the other processes sharing the "
        "GPU; ticket epochs: training epochs spent finding it. IMP and IMP-FT at the lower density continue the same "
        "seed's levels from the higher density (`--imp-from` that run) when it finished in the same call.", ""]
    meta = result.get("calls") or []
    if not result["runs"]:
        lines += ["**Prepared, not yet run on a GPU**: no figure below is measured.", ""]
    for c in meta:
        lines.append(f"- call of {c['date']}: {c['device']}, torch {c['torch']}; {c['procs']} processes side by side"
                     f"{' (measured: ' + c['calibration'] + ')' if c.get('calibration') else ''}; {c['finished']} runs "
                     f"finished, {c['interrupted']} cut off by the time box, {c['failed']} failed, in {c['elapsed_s']:.0f} s.")
    if meta:
        lines.append("")
    agg = {(a["method"], a["density"]): a for a in aggregate(result["runs"])} if result["runs"] else {}
    commands = {}
    for r in result["runs"]:
        commands.setdefault((r["method"], r["density_target"]), r["command"].replace(f"--seed {r['seed']}", "--seed S"))
    for d in s["densities"]:
        rows = []
        for v in result["variants"]:
            a = agg.get((v, d))
            expected = result.get("planned", {}).get(f"{v}|{d:g}", "")
            if a is None:
                need = [n for k, n in result.get("unfit", {}).items() if k.startswith(f"{v}|{d:g}|")]
                why = (f"not measured: needs ~{max(need)} s in one call at the measured pace" if need
                       else "not measured")
                rows.append([v, why, "", "", "", f"`{expected}`" if expected else ""])
                continue
            rows.append([v, f"{a['test_acc_mean']:.2%} ± {a['test_acc_std']:.2%} ({a['seeds']} of {s['seeds']})",
                         f"{a['time_to_ticket_s']:.{0 if a['time_to_ticket_s'] >= 10 else 1}f} s",
                         f"{a['ticket_epochs']:.0f}",
                         f"from {a['trained_from']}, {a['recipe']}", f"`{commands.get((v, d), expected)}`"])
        lines += [f"### {d:.2%} density", "", markdown_table(["method", "test acc", "time to ticket", "ticket epochs",
                                                               "ticket trained", "command (S = 0, 1, 2)"], rows), ""]
    lines += ["### Where Gem-Miner stands", ""] + standing(result, agg)
    return "\n".join(lines).rstrip()


def standing(result: dict, agg: dict) -> list[str]:
    """Gem-Miner against IMP's best variant and the best other baseline, per density, from the measured means."""
    out = []
    for d in result["settings"]["densities"]:
        gm = agg.get(("gem-miner", d))
        if gm is None:
            out.append(f"- {d:.2%}: not measured yet.")
            continue
        others = {m: a for (m, dd), a in agg.items() if dd == d and not m.startswith("gem-miner")}
        imps = {m: a for m, a in others.items() if m.startswith("imp")}
        parts = []
        for name, group in (("IMP's best variant", imps), ("the best other baseline",
                                                          {m: a for m, a in others.items() if m not in imps})):
            if not group:
                continue
            m, a = max(group.items(), key=lambda kv: kv[1]["test_acc_mean"])
            spread = max(gm["test_acc_std"], a["test_acc_std"])
            gap = gm["test_acc_mean"] - a["test_acc_mean"]
            verdict = "level with" if abs(gap) <= spread else ("above" if gap > 0 else "below")
            epochs = (f", at {a['ticket_epochs'] / max(gm['ticket_epochs'], 1e-9):.1f}x fewer ticket epochs"
                      if a["ticket_epochs"] > gm["ticket_epochs"] else "")
            parts.append(f"{verdict} {name} ({m}: {a['test_acc_mean']:.2%}; Gem-Miner {gm['test_acc_mean']:.2%}, "
                         f"gap {gap * 100:+.2f} points, seed spread {spread * 100:.2f}){epochs}")
        lr = agg.get(("gem-miner, ticket lr 0.1", d))
        if lr is not None:
            parts.append(f"its ticket trained at lr 0.1 reaches {lr['test_acc_mean']:.2%} (lr 0.01: "
                         f"{gm['test_acc_mean']:.2%})")
        out.append(f"- {d:.2%}: Gem-Miner is " + "; ".join(parts) + ".")
    return out


def load_state(path: Path | None) -> dict:
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    return {}


def main(
    out: Path = typer.Option(STATE, help="The JSON of every finished run (also the state the next call starts from)."),
    state: Path | None = typer.Option(None, help="Start from this JSON's finished runs (default: --out's, else "
                                                 "benchmarks/results/gpu-tickets.json)."),
    markdown: Path | None = typer.Option(None, help="Also write the rendered section to this file."),
    runs: Path = typer.Option(Path("/tmp/gemdeploy-gpu-tickets"), help="Where the run directories go."),
    procs: int = typer.Option(0, help="Processes side by side (0: measure 4, 8, 16 and keep the fastest)."),
    budget: float = typer.Option(0.0, help="Seconds for this call (0: 420; --smoke: 400)."),
    cuda_graph: bool = typer.Option(False, "--cuda-graph", help="Run every job with `mine --cuda-graph`."),
    smoke: bool = typer.Option(False, "--smoke", help="Toy sizes on the CPU (lenet300 / digits, 1 seed)."),
    report_only: bool = typer.Option(False, "--report-only", help="Run nothing: render the JSON into BENCHMARKS.md."),
    write_benchmarks: bool = typer.Option(True, help="Write the section into BENCHMARKS.md (never with --smoke)."),
) -> None:
    s = Settings(**SMOKE) if smoke else Settings()
    s = replace(s, budget_s=budget or s.budget_s, cuda_graph=cuda_graph)
    prior = load_state(state if state is not None else (out if out.is_file() else STATE))
    jobs = plan(s, runs)
    labels = [v.label for v in variants(s)]
    planned = {f"{j.variant.label}|{j.density:g}": j.command(s).replace(f"--seed {j.seed}", "--seed S") for j in jobs}
    result = {"schema": 1, "settings": {**asdict(s), "variants": labels}, "variants": labels, "planned": planned,
              "smoke": smoke, "runs": [], "calls": []}
    keys = {j.key for j in jobs}
    done = {f"{r['method']}|{r['density_target']:g}|{r['seed']}": r for r in prior.get("runs", [])
            if r.get("settings_key") == _settings_key(s)}  # runs of other settings (the smoke's) are not reused
    done = {k: r for k, r in done.items() if k in keys}
    prior_calls = [c for c in prior.get("calls", []) if c.get("settings_key") == _settings_key(s)]
    result["calls"] = prior_calls

    def save() -> None:
        result["runs"] = sorted(done.values(), key=lambda r: (r["density_target"], r["method"], r["seed"]))
        _atomic(out, json.dumps(result, indent=1))
        text = render(result)
        if markdown is not None:
            _atomic(markdown, text + "\n")

    if report_only:
        result["runs"] = list(done.values())
        save()
        if write_benchmarks and not smoke:
            write_section(SECTION, render(result))
        return
    import torch

    if s.device == "cuda" and not torch.cuda.is_available():
        log("no CUDA GPU visible: nothing runs (the JSON and section say not measured)")
        save()
        return
    runner = Runner(s, jobs, runs, done, procs or None)
    measured_before = [c for c in prior_calls if c.get("procs") and c.get("epoch_s")]
    if not procs and measured_before:  # an earlier call measured the concurrency and the pace: no calibration
        runner.procs, runner.epoch_s = measured_before[-1]["procs"], measured_before[-1]["epoch_s"]
    for job in jobs:  # finished run directories on this machine count too (an earlier call on the same machine)
        summary = finished_summary(job.out)
        if job.key not in done and summary is not None:
            done[job.key] = record(s, job, summary, summary.get("total_time_s", 0.0))
    log(f"{len(jobs)} jobs, {len(done)} already finished, budget {s.budget_s:.0f} s")
    started = time.monotonic()
    before = len(done)

    def save_with_call() -> None:
        device = torch.cuda.get_device_name(0) if s.device == "cuda" else f"CPU ({machine()})"
        call = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": device, "torch": torch.__version__,
                "procs": runner.procs or (runner.calibration[-1]["procs"] if runner.calibration else None),
                "calibration": ", ".join(f"{c['procs']}: {c['rate']:.2f} epochs/s" for c in runner.calibration
                                         if "rate" in c),
                "finished": len(done) - before, "interrupted": len(runner.interrupted), "failed": len(runner.failed),
                "failures": runner.failed, "elapsed_s": time.monotonic() - started, "machine": machine(),
                "epoch_s": runner.epoch_s, "settings_key": _settings_key(s)}
        result["calls"] = prior_calls + [call]
        # what no call of this length can finish at the measured pace: said in the table instead of a figure
        result["unfit"] = {j.key: round(j.expected_epochs(s) * runner.epoch_s) for j in jobs
                           if runner.epoch_s and j.key not in done
                           and j.expected_epochs(s) * runner.epoch_s + 20 > s.budget_s}
        save()

    runner.loop(save_with_call)
    log(f"done: {len(done)} of {len(jobs)} runs finished ({len(done) - before} this call), "
        f"{len(runner.interrupted)} cut off, {len(runner.failed)} failed; JSON: {out}")
    if write_benchmarks and not smoke:
        write_section(SECTION, render(result))


def _settings_key(s: Settings) -> str:
    """What a finished run must share with this call to be reused."""
    return json.dumps([s.model, s.data, s.epochs, s.finetune_epochs, list(s.imp_round_epochs), s.device])


def _atomic(path: Path, text: str) -> None:
    from gemdeploy.files import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


if __name__ == "__main__":
    typer.run(main)
