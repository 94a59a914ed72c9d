"""Which validation figure ranks configurations by how they hold on new patients?

    .venv/bin/python bench/objectives.py --data ../shared/data/chest_xray --work bench-objectives \
        [--configs 12] [--confirm 4] [--seeds 42 1] [--rung full] [--stage train|score|report]

Configurations are drawn across `experiments/aug_cnn.yaml`'s space (the first is its given
point, the rest seeded random draws, each distinct). Each configuration is trained at each
seed as one full trial of the product's own search (`pneumo-exp search --max-trials 1` with
the configuration as its initial point; `--rung` names a cheaper fidelity to train it at
too). Then every trained network is scored:

- on validation, by every candidate objective, named before any was measured: those of
  bench/perturbations.py (clean AUC and specificity at sensitivity 0.95; under
  the perturbations a new site brings, their mean and worst; pooled; the gap; the
  stability of a probability), and three more here: `views_auc` (AUC of the mean over the
  registry's eight views, what promote packages), `feature_mmd` (minus the mean MMD between
  validation's pooled features and each perturbed copy's: invariance where the site check
  looks) and `batch_spec_worst` (the worse of the specificities at sensitivity 0.95 of the
  two acquisition batches of NORMAL images, `IM-...` and `NORMAL2-IM-...`, each against
  every PNEUMONIA image);
- on the test split's patient halves as bench/new_site.py scores a version (adapted to the
  other half's unlabeled images, the configured views): the best specificity any threshold
  gives at sensitivity >= 0.95, pooled, and the AUC. The target of the ranking.

The report gives, for each candidate, Spearman's rho between its seed mean and the target's
seed mean over the configurations used to choose, a bootstrap 95% interval over
configurations, and the same rho on the `--confirm` configurations drawn after them.
Everything resumes: each configuration's training and scores are saved as they finish
(under WORK/results/), so a run of hours can stop and go on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DRAW_SEED = 2026  # the configurations' draws; the search seeds are --seeds
RUNGS: dict[str, list[str]] = {  # fidelity -> --set overrides of the trial
    "full": [],
    "e4": ["train.epochs=4", "train.patience=4"],
    "e6": ["train.epochs=6", "train.patience=6"],
    "p64e4": ["data.image_size=64", "train.epochs=4", "train.patience=4"],
    "p64e6": ["data.image_size=64", "train.epochs=6", "train.patience=6"],
}


def draw_configurations(n: int) -> list[dict[str, Any]]:
    """The given point of experiments/aug_cnn.yaml, then seeded random draws of the
    searched hyperparameters, each distinct from those before it."""
    import keras_tuner as kt

    from pneumo_exp.config import load_config
    from pneumo_exp.hypermodels import build_hypermodel

    cfg = load_config("aug_cnn")
    hypermodel = build_hypermodel(cfg, np.array([0, 1]))
    hp = kt.HyperParameters()
    hypermodel.build(hp)
    searched = [h for h in hp.space if not isinstance(h, kt.engine.hyperparameters.Fixed)]
    point = dict(cfg.search.initial_points[0])
    configs = [{h.name: point.get(h.name, h.default) for h in searched}]
    rng = np.random.default_rng(DRAW_SEED)
    while len(configs) < n:
        c = {h.name: h.random_sample(int(rng.integers(2**31))) for h in searched}
        c = {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in c.items()}
        if all(distinct(c, d) for d in configs):
            configs.append(c)
    return configs


def distinct(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Differing in a categorical or discrete value, or a continuous one by more than 5%."""
    for k in a:
        x, y = a[k], b.get(k)
        if isinstance(x, float) and isinstance(y, float):
            if abs(x - y) > 0.05 * max(abs(x), abs(y)):
                return True
        elif x != y:
            return True
    return False


def key(i: int, seed: int, rung: str) -> str:
    return f"c{i:02d}-s{seed}-{rung}"


def train(i: int, config: dict[str, Any], seed: int, rung: str, args: argparse.Namespace
          ) -> dict[str, Any]:
    """One configuration at one seed and fidelity, as one trial of the product's search."""
    out = args.work / "results" / f"{key(i, seed, rung)}.train.json"
    if out.is_file():
        return json.loads(out.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    name = key(i, seed, rung)
    sets = ["search.tuner=random", "search.max_trials=1", "search.default_first=false",
            f"search.initial_points=[{json.dumps(config)}]", "tracking.gradcam_images=0",
            *RUNGS[rung]]
    cmd = [sys.executable, "-m", "pneumo_exp.cli", "search", "aug_cnn", "--data",
           str(args.data.resolve()), "--seed", str(seed), "--name", name,
           *[x for s in sets for x in ("--set", s)]]
    started = time.time()
    log = args.work / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        code = subprocess.call(cmd, cwd=args.work, stdout=f, stderr=subprocess.STDOUT,
                               env={**os.environ, "MLFLOW_TRACKING_URI": store(args.work)})
    if code:
        raise SystemExit(f"{name}: the search exited with {code}; see {log}")
    from mlflow.tracking import MlflowClient

    from pneumo_exp.tracking.names import TAG_BEST_RUN, TAG_SEARCH
    from pneumo_exp.tracking.queries import quoted

    client = MlflowClient(store(args.work))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`{TAG_SEARCH}` = {quoted(name)} and "
                              f"tags.`{TAG_BEST_RUN}` != ''")
    best = runs[0].data.tags[TAG_BEST_RUN]
    result = {"config": i, "seed": seed, "rung": rung, "values": config, "run_id": best,
              "val_auc": client.get_run(best).data.metrics.get("best_val_auc"),
              "seconds": round(time.time() - started, 1)}
    out.write_text(json.dumps(result, indent=1))
    return result


def score(result: dict[str, Any], args: argparse.Namespace,
          cache: dict[Any, Any]) -> dict[str, Any]:
    """Every candidate on the trained network's validation set and, at full fidelity, the
    new-site target on the test split's halves; saved beside the training record."""
    out = args.work / "results" / f"{key(result['config'], result['seed'], result['rung'])}" \
        ".score.json"
    if out.is_file():
        return json.loads(out.read_text())
    from mlflow.tracking import MlflowClient
    from new_site import CEILING_SENSITIVITY, halves
    from perturbations import perturbed_sets, robustness_figures
    from sklearn.metrics import roc_auc_score

    from pneumo_exp.config import load_config
    from pneumo_exp.data.dataset import load_training_data
    from pneumo_exp.data.sources import load_split, open_source
    from pneumo_exp.evaluation.metrics import spec_at_sens
    from pneumo_exp.evaluation.two_sample import mmd_test
    from pneumo_exp.registry.selection import candidate, trial_model
    from pneumo_exp.serving.batch_norm import adapted
    from pneumo_exp.serving.features import COMPONENTS, pooled_features
    from pneumo_exp.serving.model import Member, member_probability

    client = MlflowClient(store(args.work))
    trial = client.get_run(result["run_id"])
    cfg = candidate(client, trial).cfg
    model = trial_model(trial)
    size, channels = cfg.data.image_size, cfg.data.channels
    if ("val", size, cfg.search.seed) not in cache:
        data = load_training_data(cfg.data, cfg.search.seed)
        cache["val", size, cfg.search.seed] = (data.val, perturbed_sets(data.val.images))
    val, sets = cache["val", size, cfg.search.seed]
    prob = {n: model.predict(x, batch_size=256, verbose=0).ravel() for n, x in sets.items()}
    figures = robustness_figures(val.labels, prob)
    views = load_config("aug_cnn").registry.views
    member = Member(model, size, channels)
    val_views = member_probability(member, {(size, channels): val.images}, 256, views)
    figures["views_auc"] = float(roc_auc_score(val.labels, val_views))
    feats = {n: pooled_features([model], [x]) for n, x in sets.items()}
    center, scale = feats["clean"].mean(0), feats["clean"].std(0) + 1e-8
    _, _, vt = np.linalg.svd((feats["clean"] - center) / scale, full_matrices=False)

    def proj(f: np.ndarray) -> np.ndarray:
        return ((f - center) / scale) @ vt[:COMPONENTS].T

    figures["feature_mmd"] = -float(np.mean([
        mmd_test(proj(feats["clean"]), proj(feats[n]), resamples=9).value
        for n in sets if n != "clean"]))
    names = np.array([str(n).rsplit("/", 1)[-1] for n in val.names])
    normal2 = np.char.startswith(names, "NORMAL2-")
    batches = [(val.labels == 1) | ((val.labels == 0) & part) for part in (normal2, ~normal2)]
    figures["batch_spec_worst"] = float(min(spec_at_sens(val.labels[b], prob["clean"][b], 0.95)
                                            for b in batches))
    scored = {**result, "candidates": figures}
    # every rung: how a network of that fidelity holds, beside how it ranks
    if ("test", size) not in cache:
        test = load_split(open_source(args.data.resolve()), "test", size, channels).data
        cache["test", size] = (test, halves(test.labels, test.groups, 0))
    test, parts = cache["test", size]
    arrays = {(size, channels): test.images}
    registered = member_probability(member, arrays, 256, views)
    adapted_prob = np.zeros(len(test.labels))
    for i, part in enumerate(parts):
        with adapted([model], [test.images[parts[1 - i]]]):
            adapted_prob[part] = member_probability(
                member, {(size, channels): test.images[part]}, 256, views)
    # the probabilities themselves, so that ensembles of the configurations can be judged
    # without training again (the mean of members' probabilities ranks as promote's does)
    scored["prob"] = {"val": [round(float(p), 6) for p in prob["clean"]],
                      "val_views": [round(float(p), 6) for p in val_views],
                      "registered": [round(float(p), 6) for p in registered],
                      "adapted": [round(float(p), 6) for p in adapted_prob]}
    scored["target"] = {
        f"{how}_{k}": v for how, p in (("registered", registered),
                                       ("adapted", adapted_prob))
        for k, v in (("spec_at_sens", spec_at_sens(test.labels, p, CEILING_SENSITIVITY)),
                     ("auc", float(roc_auc_score(test.labels, p))))}
    out.write_text(json.dumps(scored, indent=1))
    return scored


def report(scored: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Spearman's rho of each candidate's seed mean against the target's, over the
    configurations chosen on (a bootstrap interval over them) and over the confirming
    ones; at each rung, the rung's candidates against the full-fidelity target."""
    from scipy.stats import spearmanr

    target_key = "adapted_spec_at_sens"
    chosen = range(args.configs)
    confirm = range(args.configs, args.configs + args.confirm)

    def means(rung: str, what: str, name: str) -> dict[int, float]:
        found: dict[int, list[float]] = {}
        for r in scored:
            if r["rung"] == rung and name in r.get(what, {}):
                found.setdefault(r["config"], []).append(r[what][name])
        return {c: float(np.mean(v)) for c, v in found.items() if len(v) == len(args.seeds)}

    target = means("full", "target", target_key)
    auc_target = means("full", "target", "adapted_auc")
    rng = np.random.default_rng(0)

    def rho(x: dict[int, float], configs: range, y: dict[int, float] = target
            ) -> tuple[float, float, float, int]:
        common = [c for c in configs if c in x and c in y]
        if len(common) < 4:
            return (float("nan"),) * 3 + (len(common),)
        a, b = np.array([x[c] for c in common]), np.array([y[c] for c in common])
        value = float(spearmanr(a, b).statistic)
        boot = []
        for _ in range(2000):
            i = rng.integers(0, len(common), len(common))
            if len(set(a[i])) > 1 and len(set(b[i])) > 1:
                boot.append(spearmanr(a[i], b[i]).statistic)
        low, high = np.nanpercentile(boot, [2.5, 97.5])
        return value, float(low), float(high), len(common)

    print(f"Target: bench/new_site.py's adapted best specificity at sensitivity >= 0.95 on "
          f"the test halves, the mean of seeds {args.seeds}\n")
    print("| config | " + " | ".join(f"seed {s} val AUC" for s in args.seeds)
          + " | adapted spec at sens 0.95 | adapted AUC |")
    print("|---|" + "---|" * (len(args.seeds) + 2))
    for c in sorted(target):
        aucs = [r["val_auc"] for s in args.seeds for r in scored
                if r["config"] == c and r["seed"] == s and r["rung"] == "full"]
        print(f"| {c}{' (confirm)' if c in confirm else ''} | "
              + " | ".join(f"{a:.4f}" for a in aucs)
              + f" | {target[c]:.3f} | {auc_target.get(c, float('nan')):.4f} |")
    names = sorted({k for r in scored for k in r.get("candidates", {})})
    rungs = sorted({r["rung"] for r in scored})
    print("\n| candidate | rung | rho (chosen) | 95% interval | n | rho (confirm) | n |"
          " rho vs adapted AUC |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        for rung in rungs:
            x = means(rung, "candidates", name)
            v, lo, hi, n = rho(x, chosen)
            cv, _, _, cn = rho(x, confirm)
            av, _, _, _ = rho(x, chosen, auc_target)
            print(f"| {name} | {rung} | {v:+.2f} | [{lo:+.2f}, {hi:+.2f}] | {n} | "
                  f"{cv:+.2f} | {cn} | {av:+.2f} |")


def ensembles(scored: list[dict[str, Any]], args: argparse.Namespace, top: int = 3) -> None:
    """What a search of the chosen configurations would promote, by each candidate: at each
    seed, the mean of the `top` best configurations' probabilities (as promote averages
    its members), judged by the target on the test halves (adapted), the seeds' mean."""
    from new_site import CEILING_SENSITIVITY
    from sklearn.metrics import roc_auc_score

    from pneumo_exp.data.sources import load_split, open_source
    from pneumo_exp.evaluation.metrics import spec_at_sens

    labels = load_split(open_source(args.data), "test", 96, 1).data.labels
    full = [r for r in scored if r["rung"] == "full" and r["config"] < args.configs
            and "prob" in r]
    names = sorted({k for r in full for k in r["candidates"]})
    print(f"\nThe top {top} of the {args.configs} configurations by each candidate, averaged "
          "(adapted, the test halves; the mean of the seeds):\n")
    print(f"| candidate | spec at sens >= {CEILING_SENSITIVITY} | AUC | configurations by seed |")
    print("|---|---|---|---|")
    for name in names:
        specs, aucs, picked = [], [], []
        for seed in args.seeds:
            runs = sorted((r for r in full if r["seed"] == seed),
                          key=lambda r: -r["candidates"][name])[:top]
            prob = np.mean([r["prob"]["adapted"] for r in runs], axis=0)
            specs.append(spec_at_sens(labels, prob, CEILING_SENSITIVITY))
            aucs.append(roc_auc_score(labels, prob))
            picked.append(",".join(str(r["config"]) for r in runs))
        print(f"| {name} | {np.mean(specs):.3f} | {np.mean(aucs):.4f} | {'; '.join(picked)} |")


def store(work: Path) -> str:
    return f"sqlite:///{work.resolve() / 'mlruns' / 'mlflow.db'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset folder")
    parser.add_argument("--work", type=Path, default=Path("bench-objectives"))
    parser.add_argument("--configs", type=int, default=12, help="configurations to choose on")
    parser.add_argument("--confirm", type=int, default=0,
                        help="configurations drawn after them, to confirm the choice")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1])
    parser.add_argument("--rung", nargs="*", default=[], choices=[r for r in RUNGS if
                                                                    r != "full"],
                        help="cheaper fidelities to train every configuration at too")
    parser.add_argument("--stage", choices=("train", "score", "report"), default="report",
                        help="stop after this stage (each resumes where it stopped)")
    parser.add_argument("--trained-only", action="store_true",
                        help="score and report what is trained, train nothing (while another "
                        "process trains)")
    args = parser.parse_args()
    args.work, args.data = args.work.resolve(), args.data.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    configs = draw_configurations(args.configs + args.confirm)
    (args.work / "configurations.json").write_text(json.dumps(configs, indent=1))
    trained = {}
    for rung in ["full", *args.rung]:
        for seed in args.seeds:
            for i, config in enumerate(configs):
                done = args.work / "results" / f"{key(i, seed, rung)}.train.json"
                if args.trained_only and not done.is_file():
                    continue
                r = trained[i, seed, rung] = train(i, config, seed, rung, args)
                print(f"trained {key(i, seed, rung)}: val AUC {r['val_auc']:.4f} "
                      f"({r['seconds']:.0f} s)", flush=True)
    if args.stage == "train":
        return
    os.environ["MLFLOW_TRACKING_URI"] = store(args.work)
    os.chdir(args.work)  # the decoded images' cache of the trials
    from pneumo_exp.cli.tf_import import import_tensorflow
    import_tensorflow()
    cache: dict[Any, Any] = {}
    scored = []
    for (i, seed, rung), result in trained.items():
        scored.append(score(result, args, cache))
        print(f"scored {key(i, seed, rung)}", flush=True)
    if args.stage == "score":
        return
    report(scored, args)
    ensembles(scored, args)


if __name__ == "__main__":
    main()
