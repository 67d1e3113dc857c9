"""Training logs: what the trainer writes under logs/ and the functions that read it back.

Files of a run called NAME (rank 0 writes them; pickles are rewritten atomically):

    logs/losses/NAME.pkl   dict: "run", "meta" (the resolved config, "train_tokens" (unique tokens of the
                           train split), "params", "active_params"),
                           "step", "train_loss", "lr", "grad_norm" (one entry per step),
                           "stats" (dict of per-step lists: whatever the model/trainer reports, and
                           "epoch": passes over the training blocks after the step),
                           "val" (dict: "step", "loss", "ppl", "bits_per_token" (loss / ln 2, what
                           the TID study calls BPC), "bpb" (bits per UTF-8 byte), one entry per evaluation, and
                           "stats": dict of per-eval lists of the model's statistics, e.g. MoE load)
    logs/times/NAME.pkl    dict: "run", "step", "step_time" (s; on GPUs from CUDA events, so the
                           device time of the step), "tokens_per_s", "elapsed" (s since start,
                           summed over resumed segments), "total_elapsed"
    logs/csv/NAME.csv      one row per step: the numbers above, val_* columns filled on eval steps
    logs/tensorboard/NAME/ with log.tensorboard=true: every numeric CSV column as a TensorBoard scalar
                           at its step (val_x as val/x, the others as train/x, train_ dropped); a resumed
                           run adds an event file whose purge step hides what was logged after last.pt

    losses = load_losses("quickstart")      # -> dict as above
    times = load_times("quickstart")

The pickles are read with `load_plain_pickle`: plain lists, dicts, strings and numbers only, so a
crafted log file cannot run code (it is refused, naming the file).
"""

import csv
import io
import math
import pickle
from pathlib import Path

from fileio import append_whole, atomic_write, load_plain_pickle

PPL_CAP_LOSS = 50.0  # a diverged loss still prints a finite perplexity


def capped_perplexity(loss: float) -> float:
    """Perplexity of a mean NLL in nats: exp(min(loss, 50)), so inf gives e^50; nan stays nan."""
    return math.exp(min(loss, PPL_CAP_LOSS))


def bits_per_token(loss: float) -> float:
    """A mean NLL in nats as bits per token (the TID study's "BPC"): loss / ln 2."""
    return loss / math.log(2)


CSV_FIELDS = ["step", "train_loss", "lr", "grad_norm", "step_time", "tokens_per_s", "elapsed",
              "val_loss", "val_ppl", "val_bits_per_token", "val_bpb"]


# what the readers of each pickle take from it: key -> type ("val" is itself a dict of this kind)
LOSSES_LAYOUT = {"meta": dict, "step": list, "train_loss": list, "lr": list, "grad_norm": list, "stats": dict,
                 "val": dict}
VAL_LAYOUT = {"step": list, "loss": list, "bpb": list, "stats": dict}
TIMES_LAYOUT = {"step": list, "step_time": list, "tokens_per_s": list, "elapsed": list,
                "total_elapsed": (int, float)}


def load_losses(run: str, log_dir: str | Path = "logs") -> dict:
    """<log_dir>/losses/<run>.pkl; FileNotFoundError when there is none, UnsafeFileError (naming the file and
    the first key) when it is not plain data of LOSSES_LAYOUT, its "val" of VAL_LAYOUT."""
    return _load(Path(log_dir) / "losses" / f"{run}.pkl", _losses_problem)


def load_times(run: str, log_dir: str | Path = "logs") -> dict:
    """<log_dir>/times/<run>.pkl, checked against TIMES_LAYOUT as `load_losses` does."""
    return _load(Path(log_dir) / "times" / f"{run}.pkl", _times_problem)


def _losses_problem(d) -> str | None:
    return _layout_problem(d, LOSSES_LAYOUT) or _layout_problem(d["val"], VAL_LAYOUT, "val.")


def _times_problem(d) -> str | None:
    return _layout_problem(d, TIMES_LAYOUT)


def _layout_problem(d, layout: dict, prefix: str = "") -> str | None:
    """What keeps `d` from being a dict with `layout`'s keys and types (None when nothing does): the first
    key missing or of another type (a bool is no number), named with `prefix`. Other keys are allowed."""
    if not isinstance(d, dict):
        return f"{prefix or 'it'} holds a {type(d).__name__}, not a dict of log entries"
    for key, kind in layout.items():
        if not isinstance(d.get(key), kind) or isinstance(d.get(key), bool):
            return f"'{prefix}{key}' is missing or not a {getattr(kind, '__name__', 'number')}"
    return None


def run_log_paths(run: str, log_dir: str | Path) -> list[Path]:
    """The losses pickle, the times pickle and the CSV of `run`, in that order."""
    log_dir = Path(log_dir)
    return [log_dir / "losses" / f"{run}.pkl", log_dir / "times" / f"{run}.pkl", log_dir / "csv" / f"{run}.csv"]


def tensorboard_dir(run: str, log_dir: str | Path) -> Path:
    return Path(log_dir) / "tensorboard" / run


def tensorboard_tag(column: str) -> str:
    """The TensorBoard tag of a CSV column: val_loss -> val/loss, train_loss -> train/loss, lr -> train/lr."""
    return f"val/{column[4:]}" if column.startswith("val_") else f"train/{column.removeprefix('train_')}"


def _plain(value):
    """Python floats for numbers (e.g. numpy scalars), so the pickles hold plain data only."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value if value is None or isinstance(value, (str, bool, int)) else float(value)


def _load(path: Path, layout) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"no log at {path}: train the run first, or check the run name and log dir")
    return load_plain_pickle(path, layout)


class RunLogger:
    """Collects per-step and per-eval numbers and writes the pickles, the CSV and (optionally) W&B and
    TensorBoard (a writer with add_scalar and flush).

    A step's CSV row is held back until the next `log_step` or `save`, so an eval of the same step joins
    it; TensorBoard gets the row's numbers when the CSV gets the row. With resume_step=n the logs on disk
    are cut to the steps <= n (`_truncate_to`) and the elapsed times go on from step n's."""

    def __init__(self, run: str, log_dir: str | Path, meta: dict, resume_step: int = 0, wandb_run=None,
                 tensorboard=None):
        self.run, self.wandb, self.tensorboard = run, wandb_run, tensorboard
        self.paths = dict(zip(("losses", "times", "csv"), run_log_paths(run, log_dir)))
        for p in self.paths.values():
            p.parent.mkdir(parents=True, exist_ok=True)
        self.losses = {"run": run, "meta": meta, "step": [], "train_loss": [], "lr": [], "grad_norm": [], "stats": {},
                       "val": {"step": [], "loss": [], "ppl": [], "bits_per_token": [], "bpb": [],
                               "stats": {}}}
        self.times = {"run": run, "step": [], "step_time": [], "tokens_per_s": [], "elapsed": [],
                      "total_elapsed": 0.0}
        self.elapsed_before = 0.0
        self.csv_fields = list(CSV_FIELDS)
        self._pending_row: dict | None = None
        if resume_step:
            self._truncate_to(resume_step)
        else:
            self._write_csv_header()

    def _truncate_to(self, step: int) -> None:
        """On resume, keep what was logged up to `step` and drop the rest (it will be redone)."""
        if self.paths["losses"].is_file():
            old = _load(self.paths["losses"], _losses_problem)
            keep = sum(s <= step for s in old["step"])
            for k in ("step", "train_loss", "lr", "grad_norm"):
                self.losses[k] = old[k][:keep]
            self.losses["stats"] = {k: v[:keep] for k, v in old["stats"].items()}
            keep_val = sum(s <= step for s in old["val"]["step"])
            self.losses["val"] = {k: v[:keep_val] for k, v in old["val"].items() if k != "stats"}
            self.losses["val"]["stats"] = {k: v[:keep_val] for k, v in old["val"]["stats"].items()}
            # logs written before bits per token was logged: derive it from the loss
            self.losses["val"].setdefault("bits_per_token", [bits_per_token(x) for x in self.losses["val"]["loss"]])
        if self.paths["times"].is_file():
            old = _load(self.paths["times"], _times_problem)
            keep = sum(s <= step for s in old["step"])
            for k in ("step", "step_time", "tokens_per_s", "elapsed"):
                self.times[k] = old[k][:keep]
            self.elapsed_before = self.times["elapsed"][-1] if self.times["elapsed"] else 0.0
            self.times["total_elapsed"] = self.elapsed_before  # what a save before the next step writes
        rows = []
        if self.paths["csv"].is_file():
            with open(self.paths["csv"], newline="") as f:
                reader = csv.DictReader(f)
                self.csv_fields = reader.fieldnames or self.csv_fields
                rows = [r for r in reader if r["step"].isdigit() and int(r["step"]) <= step]
        self._rewrite_csv(rows)

    def _write_csv_header(self) -> None:
        self._rewrite_csv([])

    def _rewrite_csv(self, rows: list[dict]) -> None:
        """Replace the CSV atomically (header + rows): a kill mid-write never loses the rows before."""
        out = io.StringIO(newline="")
        writer = csv.DictWriter(out, self.csv_fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.paths["csv"], out.getvalue())

    def log_step(self, step: int, loss: float, lr: float, grad_norm: float, step_time: float,
                 tokens: int, elapsed: float, stats: dict) -> None:
        """One optimizer step. `elapsed`: seconds since this process started training (the time logged
        before a resume is added); tokens/s = tokens / step_time (nan for a step time <= 0). Each key of
        `stats` is a CSV column (added when first seen; earlier steps padded with nan in the pickle); text
        values go to the CSV and pickle only, not to W&B or TensorBoard (nor flags to TensorBoard)."""
        loss, lr, grad_norm, step_time, stats = _plain(loss), _plain(lr), _plain(grad_norm), _plain(step_time), _plain(stats)
        elapsed = _plain(elapsed) + self.elapsed_before
        self.losses["step"].append(step)
        self.losses["train_loss"].append(loss)
        self.losses["lr"].append(lr)
        self.losses["grad_norm"].append(grad_norm)
        for k, v in stats.items():
            # a key first seen late is padded so every stats list lines up with "step"
            self.losses["stats"].setdefault(k, [math.nan] * (len(self.losses["step"]) - 1)).append(v)
        self.times["step"].append(step)
        self.times["step_time"].append(step_time)
        self.times["tokens_per_s"].append(tokens / step_time if step_time > 0 else math.nan)
        self.times["elapsed"].append(elapsed)
        self.times["total_elapsed"] = elapsed
        self._flush_row()
        self._pending_row = {"step": step, "train_loss": loss, "lr": lr, "grad_norm": grad_norm,
                             "step_time": step_time, "tokens_per_s": self.times["tokens_per_s"][-1],
                             "elapsed": elapsed, **stats}
        if self.wandb is not None:
            self.wandb.log({"train/loss": loss, "lr": lr, "grad_norm": grad_norm,
                            "tokens_per_s": self.times["tokens_per_s"][-1],
                            **{f"train/{k}": v for k, v in stats.items() if not isinstance(v, str)}}, step=step)

    def log_steps(self, rows: list[dict], tokens_per_step: int, elapsed_now: float) -> None:
        """`log_step` for the rows `Trainer.read_back` gives (step, lr, loss, grad_norm, dt, stats):
        the elapsed time at each is now's, less the steps after it."""
        later = sum(r["dt"] for r in rows)
        for r in rows:
            later -= r["dt"]
            self.log_step(r["step"], r["loss"], r["lr"], r["grad_norm"], r["dt"], tokens_per_step,
                          elapsed_now - later, r["stats"])

    def log_eval(self, step: int, loss: float, bpb: float, stats: dict | None = None) -> None:
        """One evaluation: loss (nats), its capped perplexity and bits per token, bits per byte, and the
        model's statistics (as val_<key>). It joins the CSV row of `step` only while that row is the one
        held back (the last step logged); otherwise (e.g. the eval at step 0) it goes to the pickle and W&B."""
        loss, bpb, stats = _plain(loss), _plain(bpb), _plain(stats)
        ppl, bpt = capped_perplexity(loss), bits_per_token(loss)
        val = self.losses["val"]
        for k, v in zip(("step", "loss", "ppl", "bits_per_token", "bpb"), (step, loss, ppl, bpt, bpb)):
            val[k].append(v)
        for k, v in (stats or {}).items():
            val["stats"].setdefault(k, [math.nan] * (len(val["step"]) - 1)).append(v)
        if self._pending_row is not None and self._pending_row["step"] == step:
            self._pending_row.update(val_loss=loss, val_ppl=ppl, val_bits_per_token=bpt, val_bpb=bpb,
                                     **{f"val_{k}": v for k, v in (stats or {}).items()})
        if self.wandb is not None:
            self.wandb.log({"val/loss": loss, "val/ppl": ppl, "val/bits_per_token": bpt, "val/bpb": bpb,
                            **{f"val/{k}": v for k, v in (stats or {}).items()}}, step=step)

    def _flush_row(self) -> None:
        """Append the held-back row to the CSV (rewriting the file with a wider header when the row has a
        new column) and send its numbers to TensorBoard."""
        if self._pending_row is None:
            return
        new = [k for k in self._pending_row if k not in self.csv_fields]
        if new:  # a new stats column: rewrite the file with the wider header
            self.csv_fields += new
            with open(self.paths["csv"], newline="") as f:
                rows = list(csv.DictReader(f))
            self._rewrite_csv(rows)
        row = io.StringIO(newline="")
        csv.DictWriter(row, self.csv_fields).writerow(self._pending_row)
        append_whole(self.paths["csv"], row.getvalue())  # a full disk leaves no half row
        if self.tensorboard is not None:  # the row the CSV got, so the two never disagree
            step = self._pending_row["step"]
            for k, v in self._pending_row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tensorboard.add_scalar(tensorboard_tag(k), v, global_step=step)
        self._pending_row = None

    def save(self) -> None:
        """Write the pickles atomically, the pending CSV row and the TensorBoard events (before
        last.pt is written, so a resume from it finds every step it keeps on disk)."""
        self._flush_row()
        if self.tensorboard is not None:
            self.tensorboard.flush()
        for name, obj in (("losses", self.losses), ("times", self.times)):
            atomic_write(self.paths[name], pickle.dumps(obj))


def open_wandb(wandb_cfg, run_name: str, config: dict):
    """The wandb run of `wandb.mode` (offline or online), or None when disabled (the default)."""
    if wandb_cfg.mode == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        raise ValueError("wandb.mode is set but wandb is not installed: pip install wandb (or wandb.mode=disabled)") from None
    return wandb.init(project=wandb_cfg.project, name=run_name, mode=wandb_cfg.mode, config=config)


def open_tensorboard(log_cfg, run_name: str, log_dir: str | Path, resume_step: int = 0):
    """A SummaryWriter on logs/tensorboard/<run>/ when log.tensorboard is on, else None. A run resumed
    from step n writes a new event file with purge step n + 1: TensorBoard then hides the events the
    stopped process logged after its last.pt, which the resumed run logs again."""
    if not log_cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError('log.tensorboard=true needs TensorBoard: pip install -e ".[tensorboard]" '
                         "(or log.tensorboard=false)") from None
    return SummaryWriter(str(tensorboard_dir(run_name, log_dir)), purge_step=resume_step + 1 if resume_step else None)


def overfitting(losses: dict) -> dict:
    """Where a run's validation curve turned, from its losses log: the step of the best validation loss, the
    last validation loss, the mean training loss over the steps after the evaluation before the last one
    (with TID: the loss of the tokens kept; all steps when there was one evaluation; nan when no step was
    logged after it), and the gap at the end, last validation loss - that training loss."""
    val, steps = losses["val"], losses["step"]
    best = min(range(len(val["loss"])), key=val["loss"].__getitem__)  # the first of equal losses, as best.pt
    since = val["step"][-2] if len(val["step"]) > 1 else 0
    recent = [loss for step, loss in zip(steps, losses["train_loss"]) if step > since]
    train_end = sum(recent) / len(recent) if recent else math.nan
    return {"best_step": val["step"][best], "last_val_loss": val["loss"][-1], "train_loss_end": train_end,
            "train_val_gap": val["loss"][-1] - train_end}


def summary_line(summary: dict) -> str:
    """The one-line report of a finished run (generic_runner's summary dict)."""
    s = summary
    return (f"done {s['run']} [{s['model']}]: {s['steps']} steps ({s['stop']}) = {s['epochs']:.2f} epochs of "
            f"{s['train_tokens']:,} unique tokens, best val loss {s['best_val_loss']:.4f} at step {s['best_step']}, "
            f"last val loss {s['last_val_loss']:.4f}, train-val gap {s['train_val_gap']:+.4f} (train loss "
            f"{s['train_loss_end']:.4f}), val ppl {s['val_ppl']:.2f}, {s['val_bpt']:.3f} bits/token, "
            f"{s['val_bpb']:.3f} bits/byte, {s['wall_s']:.1f}s, {s['tokens_per_s']:,.0f} tokens/s"
            + (f", MFU {s['mfu']:.1%}" if s["mfu"] is not None else ""))
