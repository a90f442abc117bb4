"""`edgeres check`: evaluate a baseline and a candidate on the same test images and run the gate."""
from __future__ import annotations

from pathlib import Path

from edgeres.data import load_data
from edgeres.errors import UserInputError
from edgeres.evaluate import data_config_for
from edgeres.evaluate.classify import check_compatible, predict
from edgeres.evaluate.gate import GateConfig, GateResult, check


def check_artifacts(baseline: str | Path, candidate: str | Path, config: GateConfig, data: str | None = None,
                    threads: int | None = None) -> GateResult:
    """Gate `candidate` against `baseline`: paired predictions on the baseline's test split."""
    from edgeres import runtime
    from edgeres.bench.latency import runner_latency
    from edgeres.bench.run import artifact_size

    base = runtime.load(baseline, threads=threads)
    cand = runtime.load(candidate, threads=threads)
    if list(base.meta.class_names or []) != list(cand.meta.class_names or []):
        raise UserInputError(f"baseline and candidate classify different classes: {base.meta.class_names} vs "
                             f"{cand.meta.class_names}")
    bundle = load_data(data_config_for(base.meta, data))
    check_compatible(cand.meta, bundle)
    if cand.meta.input_shape != base.meta.input_shape:
        raise UserInputError(f"input shapes differ: baseline {base.meta.input_shape}, candidate "
                             f"{cand.meta.input_shape}; the gate compares models on the same images")
    latency = None
    if config.max_latency_ms is not None:
        latency = runner_latency(cand, 1, warmup=10, runs=100, budget_s=10).summary()["p50_ms"]
    size = artifact_size(Path(candidate)) / 1e6 if config.max_size_mb is not None else None
    return check(predict(base, bundle), predict(cand, bundle), bundle.class_names, config,
                 candidate_latency_ms=latency, candidate_size_mb=size)
