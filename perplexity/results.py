"""Results of a scoring pass: saved as logs/perplexity-losses/<name>.pkl and .json, read back, compared, printed."""

import json
import math
import pickle
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from fileio import atomic_write, load_plain_pickle
from perplexity.scoring import Scores

def results_dir(log_dir: str | Path) -> Path:
    return Path(log_dir) / "perplexity-losses"


def save_results(name: str, scores: Scores, info: dict, log_dir: str | Path = "logs") -> dict:
    """Write <log_dir>/perplexity-losses/<name>.pkl (per-row perplexities) and <name>.json (summary)."""
    out = results_dir(log_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {**scores.summary(), **info, "name": name}
    bad = [k for k in ("loss", "mean", "median", "corpus_ppl", "bpb") if not math.isfinite(summary.get(k, 0.0))]
    if bad:
        raise ValueError(f"{info.get('ckpt')}: the scores are not finite ({', '.join(f'{k}={summary[k]}' for k in bad)}); "
                         f"nothing written to {out}. The checkpoint's weights or the dtype overflow: try --dtype fp32")
    previous = out / f"{name}.json"
    if previous.is_file():  # never silently replace another checkpoint's numbers
        try:
            old = json.loads(previous.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("ckpt") != info.get("ckpt") or old.get("source") != info.get("source"):
            print(f"note: replacing {previous} (was {old.get('ckpt')}, {old.get('source')}); "
                  "use --out-name to keep both", file=sys.stderr)
    atomic_write(out / f"{name}.pkl", pickle.dumps(scores.perplexities()))
    atomic_write(out / f"{name}.json", json.dumps(summary, indent=2))
    return summary


def load_result(name: str, log_dir: str | Path = "logs") -> dict:
    """A saved summary; for a pickle without JSON (the seed's logs) the numbers its list gives."""
    out = results_dir(log_dir)
    if (out / f"{name}.json").is_file():
        return json.loads((out / f"{name}.json").read_text())
    if (out / f"{name}.pkl").is_file():
        ppl = [float(p) for p in load_plain_pickle(out / f"{name}.pkl")]
        return {"name": name, "rows": len(ppl), "mean": statistics.fmean(ppl) if ppl else math.nan,
                "median": statistics.median(ppl) if ppl else math.nan, "source": "pkl only"}
    raise FileNotFoundError(f"no perplexity results named {name!r} in {out} (run run_perplexity.py first)")


def compare_table(names: Sequence[str], log_dir: str | Path = "logs") -> str:
    """A table of several saved results, one line each."""
    header = f"{'name':24s} {'source':16s} {'rows':>7s} {'tokens':>10s} {'mean ppl':>9s} {'median':>9s} " \
             f"{'corpus ppl':>10s} {'bpb':>7s} {'rows/s':>8s}"
    lines = [header, "-" * len(header)]
    for name in names:
        r = load_result(name, log_dir)
        lines.append(f"{name:24s} {str(r.get('source', '-'))[:16]:16s} {r['rows']:>7,} {_num(r.get('tokens'), ',d'):>10s} "
                     f"{_num(r['mean'], '.3f'):>9s} {_num(r['median'], '.3f'):>9s} "
                     f"{_num(r.get('corpus_ppl'), '.3f'):>10s} {_num(r.get('bpb'), '.4f'):>7s} "
                     f"{_num(r.get('rows_per_s'), ',.1f'):>8s}")
    return "\n".join(lines)


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def report(summary: dict) -> str:
    """The printed summary of one scoring pass."""
    unit = "block" if summary.get("packed") else "row"
    seed = "" if summary.get("packed") else "   (the seed's aggregate)"
    skipped = summary.get("skipped") or {}
    skipped = f"; {sum(skipped.values()):,} rows skipped ({', '.join(skipped)})" if skipped else ""
    return "\n".join([
        f"{summary['source']} of {summary['run']} (step {summary['step']}): {summary['rows']:,} {unit}s, "
        f"{summary['tokens']:,} scored tokens, {summary['bytes']:,} bytes{skipped}",
        f"  {f'mean per-{unit} ppl':22s}{summary['mean']:12.3f}{seed}",
        f"  {f'median per-{unit} ppl':22s}{summary['median']:12.3f}",
        f"  {'corpus ppl':22s}{summary['corpus_ppl']:12.3f}   exp(total NLL / total tokens) = exp({summary['loss']:.4f})",
        f"  {'bits per token':22s}{summary['bits_per_token']:12.4f}   (loss / ln 2)",
        f"  {'bits per byte':22s}{summary['bpb']:12.4f}",
        f"  {summary['rows']:,} {unit}s in {summary['seconds']:.2f}s: {summary['rows_per_s']:,.1f} {unit}s/s, "
        f"{summary['tokens_per_s']:,.0f} tokens/s on {summary['device']} ({summary['dtype']})",
    ])
