"""The phases of `edgeres optimize` (see `edgeres.optimize.search` for the method) and its entry point."""
from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Callable

from edgeres.artifacts import write_json
from edgeres.errors import UserInputError
from edgeres.optimize.search import OptimizeConfig, Search
from edgeres.optimize.space import Candidate, Quantization, Structure, macs_for_latency, quantizations, rank

log = logging.getLogger("edgeres")
PROBE_CALIB = 32  # calibration images of a probe's INT8 file: it is timed, not judged
GATE_TRIES = 3    # finalists gated on the test split before the search gives up
GATE_RESERVE_S = 30.0 + 20.0 * GATE_TRIES  # one timing run and a gate per try


class NotFound(Exception):
    """No candidate met the constraints: the gate's exit code 1, with the closest candidates reported."""

    def __init__(self, message: str, result: dict[str, Any]):
        super().__init__(message)
        self.result = result


def optimize(baseline: str | Path, out: str | Path, config: OptimizeConfig = OptimizeConfig(),
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Search, gate and publish; returns the result (also out/optimize.json). Raises NotFound when nothing
    meets the constraints, after writing the report of what came closest."""
    from edgeres.optimize.output import write_outputs

    s = Search(baseline, out, config, progress)
    s.say(f"baseline {s.meta.arch} val {s.metric} {s.baseline_val:.2%}; backend {config.backend}; "
          f"limit {config.max_drop:g} points" + (f", target {config.target_ms:g} ms" if config.target_ms else ""))
    s.dense = _dense(s)
    structures = _probe(s)
    failure = None
    if config.target_ms is not None and not any(p["latency_ms"] <= config.target_ms for p in structures):
        failure = (f"latency: no structure reaches --target-ms {config.target_ms:g}; the fastest probed, "
                   f"{_fastest(structures)}")
        trained, quantized, gates = [], [], []
    else:
        trained = _halving(s, structures)
        quantized = _quantize(s, _finalists(s, trained))
        gates = _gate(s, quantized)
        if not any(g["passed"] for g in gates):
            failure = _why_not(s, quantized, gates)
    chosen = next((g for g in gates if g["passed"]), None)
    result = {"config": dataclasses.asdict(config), "baseline": str(s.baseline), "baseline_val": s.baseline_val,
              "metric": s.metric, "dense": s.dense, "probe": structures, "trained": trained,
              "quantized": quantized, "gates": gates, "chosen": chosen, "failure": failure,
              "minutes": round(s.state.elapsed / 60, 2), "dense_latency_ms": s.dense_latency_ms,
              "all_probes": s.all_probes}
    if chosen is not None:
        result["published"] = _publish(s, chosen)
    s.state.data["result"] = {"chosen": chosen, "failure": failure}
    s.state.save()
    write_outputs(s, result)
    write_json(s.out / "optimize.json", result)
    s.say("done: " + (f"chosen {chosen['label']}" if chosen else failure))
    if failure:
        raise NotFound(failure, result)
    return result


# ---------------------------------------------------------------- phase 0 and 1: the hand path, the probe

def _dense(s: Search) -> dict[str, Any]:
    def run(out: Path) -> dict[str, Any]:
        exported = s.export_int8(s.baseline, out, Quantization())
        if exported["file"] is None:  # still the file a user would get: timed as the reference all the same
            exported.update(file=_failed_file(out), failed_validation=exported.pop("error"))
        return {"kind": "export", **exported}
    s.say(f"dense INT8 {s.config.backend} file (the hand path: the exporter's defaults)")
    return s.step("dense", run)


def _probe_one(s: Search, st: Structure) -> dict[str, Any]:
    def run(out: Path) -> dict[str, Any]:
        from edgeres.checkpoint import checkpoint_sha256, load_checkpoint, save_checkpoint
        from edgeres.compress.prune import estimated_latency, prune
        from edgeres.errors import UserInputError

        out.mkdir(parents=True)
        model, meta = load_checkpoint(s.baseline)
        dense = estimated_latency(model, meta.input_shape, s.roofline)
        try:
            report = prune(model, meta.input_shape, s.prune_config(st))
        except UserInputError as e:  # e.g. a fraction below what this channel multiple can reach
            return {"kind": "probe", "structure": dataclasses.asdict(st), "file": None, "infeasible": str(e)}
        meta.parent_sha256, meta.metrics = checkpoint_sha256(s.baseline), {}
        save_checkpoint(model, meta, out / "model")
        exported = s.export_int8(out / "model", out / "export", Quantization(calib_size=PROBE_CALIB),
                                 validate_size=8)
        file = exported["file"] or _failed_file(out / "export")
        return {"kind": "probe", "structure": dataclasses.asdict(st), "file": file,
                "macs_fraction": report.macs_fraction, "params": report.params_after,
                "roofline_fraction": estimated_latency(model, meta.input_shape, s.roofline) / dense}
    s.say(f"probe {st.label()}")
    record = s.step(st.key, run)
    if record["file"] is None:
        s.say(f"  skipped: {record['infeasible']}")
    return record


def _failed_file(export_dir: Path) -> str:
    """A probe's file that missed the exporter's tolerance (untrained weights): still right for timing."""
    found = sorted((export_dir / "failed").glob("model.int8.*"))
    if not found:
        raise RuntimeError(f"the probe's INT8 export wrote no file in {export_dir}")
    return str(next((f for f in found if f.suffix in (".xml", ".onnx")), found[0]))


def _timed(s: Search, key: str, files: list[str]) -> dict[str, dict[str, float]]:
    done = s.state.get(key)
    if done is None:
        done = s.state.put(key, {"kind": "timing", "files": s.latencies(files)})
    s.dense_latency_ms = done["files"][s.dense["file"]]["latency_ms"]
    return done["files"]


def _probe(s: Search) -> list[dict[str, Any]]:
    """Every (fraction, rounding) probed and timed; per fraction the rounding the runtime runs fastest, and
    beside it the latency-aware allocation at the same estimated latency, timed again with it."""
    c = s.config
    records = [r for r in (_probe_one(s, Structure(m, r)) for m in c.macs for r in c.round_to) if r["file"]]
    if not records:
        raise UserInputError(f"no kept-MACs fraction in {list(c.macs)} can be reached with channel multiples "
                             f"{list(c.round_to)}: raise --macs or lower --round-to")
    times = _timed(s, "timing-probe", [r["file"] for r in records])
    records = [dict(r) for r in records]
    for r in records:
        r.update(times[r["file"]], timed="probe")
    s.all_probes = records
    best = _fastest_rounding(records)
    if "latency" in c.allocations:
        extra = [_probe_one(s, Structure(b["structure"]["macs"], b["structure"]["round_to"], "latency",
                                         round(b["roofline_fraction"], 3))) for b in best]
        extra = [e for e in extra if e["file"]]
        # The two allocations side by side in a second run; the first run's figures stay as they were.
        both = [dict(r) for r in [*best, *extra]]
        times = _timed(s, "timing-allocation", [r["file"] for r in both])
        for r in both:
            r.update(times[r["file"]], timed="allocation")
        best = both
        s.all_probes = [*records, *both]
    if c.target_ms is not None:
        uniform = [r for r in best if r["structure"]["allocation"] == "uniform"]
        fraction = macs_for_latency([(r["macs_fraction"], r["latency_ms"]) for r in uniform], c.target_ms)
        if fraction is not None and all(abs(fraction - r["structure"]["macs"]) > 0.01 for r in uniform):
            nearest = min(uniform, key=lambda r: abs(r["macs_fraction"] - fraction))
            extra = _probe_one(s, Structure(round(fraction, 3), nearest["structure"]["round_to"]))
            if extra["file"]:
                extra.update(_timed(s, "timing-target", [extra["file"]])[extra["file"]])
                s.say(f"--target-ms {c.target_ms:g}: interpolated {fraction:.3f} of the MACs, measured "
                      f"{extra['latency_ms']:.3f} ms")
                best.append(extra)
    for r in best:
        s.say(f"probe {Structure(**r['structure']).label()}: {r['macs_fraction']:.3f} of the MACs, "
              f"{r['latency_ms']:.3f} ms ({1 / r['ratio_to_dense']:.2f}x the dense file)")
    return sorted(best, key=lambda r: (-r["structure"]["macs"], r["structure"]["allocation"]))


def _fastest_rounding(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per kept-MACs level, the channel multiple measured fastest (its MACs differ a little with rounding)."""
    by_macs: dict[float, dict[str, Any]] = {}
    for r in records:
        m = r["structure"]["macs"]
        if m not in by_macs or r["latency_ms"] < by_macs[m]["latency_ms"]:
            by_macs[m] = r
    return list(by_macs.values())


def _fastest(records: list[dict[str, Any]]) -> str:
    r = min(records, key=lambda r: r["latency_ms"])
    return f"{r['structure']['macs']:g} of the MACs, takes {r['latency_ms']:.3f} ms"


# ---------------------------------------------------------------- phase 2: successive halving

def _halving(s: Search, structures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    c = s.config
    usable = [p for p in structures if c.target_ms is None or p["latency_ms"] <= c.target_ms]
    latency = {Structure(**p["structure"]).key: p for p in usable}
    alive = []
    for p in usable:
        st = Structure(**p["structure"])
        # the latency-aware allocation ranks by l2 importance per unit latency: one criterion, not every one
        importances = c.importances if st.allocation == "uniform" else c.importances[:1]
        alive += [Candidate(st, imp, kd, c.first_epochs) for imp in importances for kd in c.distill]
    trained: list[dict[str, Any]] = []
    for rung in range(c.rungs):
        epochs = c.first_epochs * c.eta ** rung
        alive = [dataclasses.replace(a, epochs=epochs) for a in alive]
        results = []
        for i, cand in enumerate(alive):
            if s.state.get(cand.key) is None and not _affordable(s, epochs, len(alive) - i):
                s.say(f"rung {rung + 1}: the budget leaves no time for {cand.label()}; ending the halving")
                break
            s.say(f"rung {rung + 1}/{c.rungs} ({epochs} epochs), {i + 1}/{len(alive)}: {cand.label()}")
            rec = dict(s.step(cand.key, lambda out, cand=cand: s.prune(cand, out)))
            probe = latency[cand.structure.key]
            rec.update(rung=rung + 1, latency_ms=probe["latency_ms"], ratio_to_dense=probe["ratio_to_dense"],
                       label=cand.label())
            s.say(f"  val {s.metric} {rec['val']:.2%} ({_points(rec['val'] - s.baseline_val)}), "
                  f"{rec['latency_ms']:.3f} ms")
            results.append(rec)
        trained += results
        if not results or len(results) < len(alive) or rung == c.rungs - 1:
            break
        slack = c.max_drop * (c.rungs - 1 - rung)  # a short fine-tune under-states what longer training reaches
        ranked = rank(results, s.baseline_val, c.max_drop, c.target_ms, slack)
        keep = {r["candidate"]["key"] for r in ranked[:max(1, math.ceil(len(ranked) / c.eta))]}
        alive = [a for a in alive if a.key in keep]
    return trained


def _affordable(s: Search, epochs: int, remaining_in_rung: int) -> bool:
    """Whether one more training fits, leaving time for the quantization and gate phases."""
    per_epoch = [st["seconds"] / max(st["candidate"]["epochs"], 1) for st in s.state.data["steps"].values()
                 if st.get("kind") == "train"]
    estimate = epochs * (sum(per_epoch) / len(per_epoch)) if per_epoch else 0.0
    return s.left() - estimate > _reserve(s)


def _reserve(s: Search) -> float:
    """Seconds the last phases need: a few INT8 exports per finalist, one timing run, a gate per try."""
    export = s.state.get("dense")["seconds"] if s.state.get("dense") else 30.0
    variants = len(quantizations(s.config.backend, s.config.max_drop, 1))
    return export * s.config.finalists * variants * 0.8 + GATE_RESERVE_S + export


def _points(delta: float) -> str:
    return f"{delta * 100:+.2f} points"


def _finalists(s: Search, trained: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not trained:
        return []
    last = max(r["rung"] for r in trained)
    pool = [r for r in trained if r["rung"] == last]
    if len(pool) < s.config.finalists:  # the budget cut the last rung short: take the best of the one before
        pool += [r for r in trained if r["rung"] == last - 1 and r["candidate"]["structure"]
                 not in [p["candidate"]["structure"] for p in pool]]
    return rank(pool, s.baseline_val, s.config.max_drop, s.config.target_ms)[:s.config.finalists]


# ---------------------------------------------------------------- phase 3: quantization choices

def _quantize(s: Search, finalists: list[dict[str, Any]]) -> list[dict[str, Any]]:
    c = s.config
    train_size = _train_size(s)
    records = []
    for f in finalists:
        for qi, q in enumerate(quantizations(c.backend, c.max_drop, train_size)):
            key = f"{f['candidate']['key']}-{q.key}"
            if qi > 0 and s.state.get(key) is None and s.left() < GATE_RESERVE_S:
                s.say(f"no time left for {q.label()} on {f['label']}")
                continue
            s.say(f"INT8 {q.label()}: {f['label']}")
            rec = s.step(key, lambda out, f=f, q=q: {"kind": "export", **s.export_int8(Path(f["checkpoint"]), out, q)})
            if rec["file"] is None:
                s.say(f"  failed: {rec.get('error')}")
                continue
            records.append({**rec, "candidate": f["candidate"], "checkpoint": f["checkpoint"],
                            "quantization": {**dataclasses.asdict(q), "label": q.label()},
                            "label": f"{f['label']}; INT8 {q.label()}", "key": key,
                            "macs_fraction": f["macs_fraction"], "params": f["params"]})
    if records:
        times = _timed(s, "timing-final-" + "-".join(sorted(r["key"][-6:] for r in records)),
                       [r["file"] for r in records])
        for r in records:
            r.update(times[r["file"]])
            s.say(f"{r['label']}: val {r['val']:.2%} ({_points(r['val'] - s.baseline_val)}), "
                  f"{r['latency_ms']:.3f} ms, {1 / r['ratio_to_dense']:.2f}x the dense file")
    return records


def _train_size(s: Search) -> int:
    from edgeres.evaluate import load_task_data

    return len(load_task_data(s.meta).dataset("train"))


# ---------------------------------------------------------------- phase 4: the gate on the test split

def _gate(s: Search, quantized: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from edgeres.check import check_artifacts
    from edgeres.evaluate.gate import GateConfig

    c = s.config
    ranked = rank(quantized, s.baseline_val, c.max_drop, c.target_ms)
    fits = [r for r in ranked if (s.baseline_val - r["val"]) * 100 <= c.max_drop + 1e-9
            and (c.target_ms is None or r["latency_ms"] <= c.target_ms)]
    gates = []
    for r in fits[:GATE_TRIES]:
        key = f"gate-{r['key']}"
        done = s.state.get(key)
        if done is None:
            s.say(f"gate on the test split: {r['label']}")
            result = check_artifacts(s.baseline, r["file"], GateConfig(max_drop=c.max_drop),
                                     threads=c.threads)
            done = s.state.put(key, {"kind": "gate", "passed": result.passed, "reasons": result.reasons,
                                     "test_baseline": result.metric_checks[0].baseline,
                                     "test_candidate": result.metric_checks[0].candidate,
                                     "delta_points": result.delta_points,
                                     "delta_ci_points": list(result.delta_ci_points), "n": result.n,
                                     "p_value": result.metric_checks[0].p_value})
        gates.append({**r, **{k: v for k, v in done.items() if k != "kind"}})
        s.say(f"  {'passed' if done['passed'] else 'failed'}: test {done['delta_points']:+.2f} points "
              f"(95% CI {done['delta_ci_points'][0]:+.2f} to {done['delta_ci_points'][1]:+.2f})")
        if done["passed"]:
            break
    return gates


def _why_not(s: Search, quantized: list[dict[str, Any]], gates: list[dict[str, Any]]) -> str:
    c = s.config
    if not quantized:
        errors = [st["error"] for key, st in s.state.data["steps"].items()
                  if st.get("kind") == "export" and key != "dense" and st.get("file") is None]
        if errors:
            return f"every INT8 export of the finalists failed: {errors[0]}"
        return "no candidate was trained and quantized within the budget; raise --budget-minutes"
    if gates:
        g = gates[0]
        return (f"accuracy on the test split: the best candidate by val ({g['label']}) dropped "
                f"{-g['delta_points']:.2f} points > {c.max_drop:g}; " + "; ".join(g["reasons"]))
    best = max(quantized, key=lambda r: r["val"])
    fastest = min(quantized, key=lambda r: r["latency_ms"])
    parts = []
    if (s.baseline_val - best["val"]) * 100 > c.max_drop:
        parts.append(f"accuracy: the most accurate candidate ({best['label']}) dropped "
                     f"{(s.baseline_val - best['val']) * 100:.2f} val points > {c.max_drop:g}")
    if c.target_ms is not None and fastest["latency_ms"] > c.target_ms:
        parts.append(f"latency: the fastest candidate ({fastest['label']}) takes {fastest['latency_ms']:.3f} ms > "
                     f"--target-ms {c.target_ms:g}")
    return "; ".join(parts) or ("no candidate meets both the accuracy limit and --target-ms at once; "
                                "see the closest in the report")


# ---------------------------------------------------------------- publishing

def _publish(s: Search, chosen: dict[str, Any]) -> dict[str, str]:
    """The gated checkpoint and its export folder, copied whole to out/model and out/export."""
    model, export = s.out / "model", s.out / "export"
    for target, source in ((model, Path(chosen["checkpoint"])), (export, Path(chosen["file"]).parent)):
        tmp, old = target.with_name(f".{target.name}.copy"), target.with_name(f".{target.name}.old")
        for leftover in (tmp, old):
            shutil.rmtree(leftover, ignore_errors=True)
        shutil.copytree(source, tmp)
        if target.exists():  # a rerun: the previous copy stays whole until the new one is in place
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    return {"checkpoint": str(model), "file": str(export / Path(chosen["file"]).name), "export": str(export)}


__all__ = ["NotFound", "OptimizeConfig", "optimize"]
