"""Reading X-rays as files and from a PACS: decode throughput of PNG against the source
JPEGs and DICOM (uncompressed, JPEG Lossless, JPEG 2000), predict time on each, and the
round trip through Orthanc's DICOMweb.

    .venv/bin/python bench/decode.py --data ../shared/data/chest_xray/test \
        [--model models:/pneumonia-classifier@champion] [--size 96] [--rounds 3]

The images under --data are converted once (bench/dicom_copies.py; PNGs with Pillow) into a
work folder. Decoding is timed with `decode_image` at --size, the best of --rounds passes;
predict with `pneumo-exp predict`'s own code on every format (the model loaded once). With
Orthanc installed, the DICOM copies are uploaded to a throwaway Orthanc, then predicted
over DICOMweb twice: the first pull, and a re-run that reads the cache. Prints markdown
tables.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_copies import copy_folder
from PIL import Image

SOURCE = "source"  # the files under --data as they are
FORMATS = {"PNG": None, "JPEG (the source files)": SOURCE, "DICOM uncompressed": "mono2",
           "DICOM JPEG Lossless": "jpeg-lossless", "DICOM JPEG 2000": "j2k"}


def convert(src: Path, work: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for name, variant in FORMATS.items():
        if variant == SOURCE:
            out[name] = files_under(src)
            continue
        folder = work / name.replace(" ", "_")
        if not folder.is_dir():
            if variant is None:
                for f in files_under(src):
                    target = folder / f.relative_to(src).with_suffix(".png")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    Image.open(f).convert("L").save(target)
            else:
                copy_folder(src, folder, variant)
        out[name] = files_under(folder)
    return out


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def best_of(rounds: int, run: object) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a folder of images")
    parser.add_argument("--model", help="a registered version to time predict with")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, help="folder for the copies (default: a "
                        "temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="pneumo-decode-"))
    files = convert(args.data, work)
    n = len(files["PNG"])

    from pneumo_exp.data.images import decode_image

    print(f"{n} images of {args.data}, decoded to {args.size} px, best of {args.rounds}\n")
    print("| format | MB | decode, images/s | predict, s | vs PNG | largest |p - p(PNG)| |\n"
          "|---|---|---|---|---|---|")
    model = None
    if args.model:
        from pneumo_exp.cli.tf_import import import_tensorflow
        import_tensorflow()
        from pneumo_exp.serving.predict import load, predict_files
        model = load(args.model)
        predict_files(model, files["PNG"][:8])  # warm-up: the first call traces
    predict_png = None
    probability_png: dict[tuple[str, str], float] = {}
    for name, paths in files.items():
        seconds = best_of(args.rounds, lambda p=paths: [decode_image(f, args.size, 1)
                                                       for f in p])
        mb = sum(f.stat().st_size for f in paths) / 1e6
        predict = ratio = gap = ""
        if model is not None:
            t = best_of(args.rounds, lambda p=paths: predict_files(model, p))
            predict_png = predict_png or t
            predict, ratio = f"{t:.2f}", f"{t / predict_png:.2f}x"
            # the same X-ray in every container: its class folder and file stem
            found = dict(zip(((f.parent.name, f.stem) for f in paths),
                             predict_files(model, paths)["probability"], strict=True))
            probability_png = probability_png or found
            gap = f"{max(abs(found[k] - p) for k, p in probability_png.items()):.4f}"
        print(f"| {name} | {mb:.1f} | {len(paths) / seconds:.0f} | {predict} | {ratio} | "
              f"{gap} |", flush=True)
    if model is not None and shutil.which("Orthanc"):
        pacs_round_trip(files["DICOM JPEG Lossless"], args.model, args.rounds)


def pacs_round_trip(paths: list[Path], uri: str, rounds: int) -> None:
    """`pneumo-exp predict` on the files, then uploaded to a throwaway Orthanc and predicted
    over DICOMweb: the first pull (a new server's URL, an empty cache), then from the cache
    (the best of `rounds`, as the files are). Each run loads the model, as the command
    does."""
    import contextlib
    import io

    from orthanc import orthanc

    from pneumo_exp.cli import main as cli

    def predict(*source: str) -> float:
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli(["predict", "--model", uri, "--format", "csv", *source]) == 0
        return time.perf_counter() - start

    on_disk = min(predict(*map(str, paths)) for _ in range(rounds))
    with tempfile.TemporaryDirectory() as tmp, orthanc(Path(tmp)) as pacs:
        start = time.perf_counter()
        pacs.upload(paths)
        upload = time.perf_counter() - start
        first = predict("--dicomweb", pacs.dicomweb, "--modality", "DX")
        cached = min(predict("--dicomweb", pacs.dicomweb, "--modality", "DX")
                     for _ in range(rounds))
    print(f"\n| {len(paths)} JPEG Lossless instances | seconds |\n|---|---|\n"
          f"| pneumo-exp predict on the files | {on_disk:.1f} |\n"
          f"| upload to Orthanc (REST) | {upload:.1f} |\n"
          f"| pneumo-exp predict --dicomweb, first pull | {first:.1f} |\n"
          f"| pneumo-exp predict --dicomweb, cached | {cached:.1f} "
          f"({cached / on_disk:.2f}x the files) |")


if __name__ == "__main__":
    main()
