"""A registered version where pneumo-exp is not installed: a fresh virtual environment built
from the version's own requirements.txt alone, in a folder outside the repository, loads it
with plain MLflow and serves it; both must answer a PNG, a JPEG and DICOM objects (in the
encodings of bench/dicom_copies.py) with `pneumo-exp predict`'s probabilities, to 1e-6.

    .venv/bin/python bench/reuse.py [--model models:/pneumonia-classifier@champion]
        [--work /tmp/pneumo-reuse] [--python python3.11]

Run it from the folder whose store holds the version (mlruns/, or $MLFLOW_TRACKING_URI).
The environment is built with pip from the package index (a second run reuses pip's cache).
Prints a table and writes WORK/reuse.json; exits 1 when an answer differs.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-6
DICOM_VARIANTS = ("mono2", "mono1", "rle", "j2k", "jpeg-lossless")  # jpeg-lossless: dcmtk

# In the fresh environment: load the version by its models:/ URI, predict the files.
PYFUNC = """
import json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
files = sys.argv[2:]
answer = model.predict(pd.DataFrame({"image": [open(f, "rb").read() for f in files]}))
import pneumo_exp
print(json.dumps({"probabilities": answer["probability"].tolist(),
                  "code": pneumo_exp.__file__}))
"""


def images(folder: Path) -> list[Path]:
    """A PNG of the bundled sample, the same X-ray as a JPEG, and as DICOM objects."""
    sys.path.insert(0, str(REPO / "bench"))
    from dicom_copies import write_dicom

    folder.mkdir(parents=True, exist_ok=True)
    source = sorted((REPO / "data" / "sample" / "test" / "PNEUMONIA").glob("*.png"))[0]
    png = folder / "scan.png"
    shutil.copy(source, png)
    pixels = np.asarray(Image.open(png).convert("L"))
    jpeg = folder / "scan.jpeg"
    Image.fromarray(pixels).save(jpeg, quality=95)
    variants = [v for v in DICOM_VARIANTS if v != "jpeg-lossless" or shutil.which("dcmcjpeg")]
    return [png, jpeg, *(write_dicom(pixels, folder / f"scan-{v}.dcm", v) for v in variants)]


def project_predict(model: str, files: list[Path]) -> list[float | None]:
    out = subprocess.run([sys.executable, "-m", "pneumo_exp.cli", "predict", "--model", model,
                          "--format", "json", *map(str, files)], check=True,
                         capture_output=True, text=True).stdout
    return [row["probability"] for row in json.loads(out)]


def fresh_environment(work: Path, python: str, requirements: Path) -> tuple[Path, float]:
    """A virtual environment with the version's requirements and nothing else; seconds."""
    started = time.time()
    venv = work / "venv"
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([python, "-m", "venv", str(venv)], check=True, cwd=work, env=bare_env())
    with (work / "pip.log").open("w") as log:
        subprocess.run([str(venv / "bin" / "pip"), "install", "-r", str(requirements)],
                       check=True, cwd=work, env=bare_env(venv), stdout=log,
                       stderr=subprocess.STDOUT)
    lost = subprocess.run([str(venv / "bin" / "python"), "-c", "import pneumo_exp"],
                          cwd=work, env=bare_env(venv), capture_output=True)
    if lost.returncode == 0:
        raise SystemExit("pneumo_exp is importable in the fresh environment: not a fair test")
    return venv, time.time() - started


def bare_env(venv: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a user's shell, no PYTHONPATH; `venv` activated."""
    keep = ("HOME", "LANG", "PIP_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_DISABLE_PIP_VERSION_CHECK",
            "PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")
    active = {"VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}:/usr/bin:/bin"} if venv else {}
    return {"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3",
            **{k: os.environ[k] for k in keep if k in os.environ}, **active, **extra}


def pyfunc_predict(venv: Path, work: Path, model: str, store: str,
                   files: list[Path]) -> tuple[list[float | None], str]:
    out = subprocess.run([str(venv / "bin" / "python"), "-c", PYFUNC, model, *map(str, files)],
                         cwd=work, env=bare_env(venv, MLFLOW_TRACKING_URI=store), check=True,
                         capture_output=True, text=True).stdout
    answer = json.loads(out.strip().splitlines()[-1])
    return answer["probabilities"], answer["code"]


def served_predict(venv: Path, work: Path, model: str, store: str,
                   files: list[Path]) -> list[float | None]:
    """`mlflow models serve --env-manager local`, and one request of the files."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (work / "serve.log").open("w")
    server = subprocess.Popen([str(venv / "bin" / "mlflow"), "models", "serve", "-m", model,
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              cwd=work, env=bare_env(venv, MLFLOW_TRACKING_URI=store), stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 600
        while True:
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"the server did not start: {work / 'serve.log'}") from None
                time.sleep(2)
        rows = [[base64.b64encode(f.read_bytes()).decode()] for f in files]
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()
        request = urllib.request.Request(f"{url}/invocations", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            answer = json.loads(response.read())
        return [row["probability"] for row in answer["predictions"]]
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def differs(a: float | None, b: float | None) -> bool:
    return a is None or b is None or abs(a - b) > TOLERANCE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models:/pneumonia-classifier@champion")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pneumo-reuse"),
                        help="a folder outside the repository (emptied first)")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter of the fresh environment (the version's: "
                        "its python_env.yaml)")
    args = parser.parse_args()
    work = args.work.resolve()
    if work.is_relative_to(REPO):
        raise SystemExit(f"{work} is inside the repository; give --work outside it")
    import mlflow

    import pneumo_exp

    store = pneumo_exp.use_project_store()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    version = Path(mlflow.artifacts.download_artifacts(args.model, dst_path=str(work / "model")))
    requirements = version / "requirements.txt"
    files = images(work / "images")
    expected = project_predict(args.model, files)
    venv, seconds = fresh_environment(work, args.python, requirements)
    loaded, code = pyfunc_predict(venv, work, args.model, store, files)
    served = served_predict(venv, work, args.model, store, files)
    rows = [{"file": f.name, "predict": e, "pyfunc": p, "served": s}
            for f, e, p, s in zip(files, expected, loaded, served, strict=True)]
    bad = [r for r in rows if differs(r["predict"], r["pyfunc"])
           or differs(r["predict"], r["served"])]
    result = {"model": args.model, "requirements": requirements.read_text().split(),
              "python": subprocess.run([str(venv / "bin" / "python"), "--version"],
                                       capture_output=True, text=True).stdout.strip(),
              "install_seconds": round(seconds), "snapshot": code, "rows": rows,
              "max_difference": max(abs(r[k] - r["predict"]) for r in rows
                                    for k in ("pyfunc", "served")
                                    if r[k] is not None and r["predict"] is not None),
              "agree": not bad}
    (work / "reuse.json").write_text(json.dumps(result, indent=1))
    print(f"{args.model}: a fresh {result['python']} environment from its requirements.txt "
          f"alone ({len(result['requirements'])} lines, {seconds:.0f} s to install); the code "
          f"it ran: {code}")
    print("file\tpneumo-exp predict\tmlflow.pyfunc\tmlflow models serve")
    for r in rows:
        print("\t".join([r["file"], *(f"{r[k]:.6f}" if r[k] is not None else "-"
                                      for k in ("predict", "pyfunc", "served"))]))
    print(f"largest difference {result['max_difference']:.1e}: "
          f"{'all agree' if not bad else 'DIFFERENT: ' + ', '.join(r['file'] for r in bad)}"
          f" (within {TOLERANCE:g}); {work / 'reuse.json'}")
    raise SystemExit(0 if not bad else 1)


if __name__ == "__main__":
    main()
