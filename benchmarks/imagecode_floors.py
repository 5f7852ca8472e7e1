"""ImageCoDe floors on the real description files (no images): random, majority target index, and a text-only
logistic-regression classifier of the target index from an l2v embedding of the description.

The dev split (valid_data.json, 2302 descriptions) is scored in full. The text classifier is fitted on a seeded
sample of the 16594 training descriptions (--limit-train, default 4000) because the built-in SmolLM2-135M encodes
about 13 descriptions a second on one CPU core here; pass --limit-train 0 for all of them.

    OMP_NUM_THREADS=1 python benchmarks/imagecode_floors.py [--encoder smollm2-135m] [--limit-train 4000]
Results go to benchmarks/results/imagecode_floors.json (its "markdown" key holds the table).
"""

from __future__ import annotations

import argparse
import platform
import time

from _common import DATA, RESULTS

from l2v.fileio import write_json_atomic
from l2v.imagecode.floors import compute_floors, floors_markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA / "imagecode"))
    parser.add_argument("--encoder", default="smollm2-135m")
    parser.add_argument("--limit-train", type=int, default=4000, help="training descriptions for the text classifier (0: all)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--no-text", action="store_true", help="random and majority only")
    args = parser.parse_args()
    began = time.perf_counter()
    result = compute_floors(args.data, None if args.no_text else args.encoder, limit_train=args.limit_train or None,
                            max_length=args.max_length)
    result["meta"] = {"data": "McGill-NLP/imagecode @ 609f076 (train_data.json, valid_data.json)",
                      "what": "accuracy on the dev split without looking at any image",
                      "seconds": round(time.perf_counter() - began, 1), "machine": platform.processor() or platform.machine(),
                      "command": "OMP_NUM_THREADS=1 python benchmarks/imagecode_floors.py "
                                 f"--encoder {args.encoder} --limit-train {args.limit_train}"}
    result["markdown"] = floors_markdown(result)
    write_json_atomic(result, RESULTS / "imagecode_floors.json")
    print(floors_markdown(result))


if __name__ == "__main__":
    main()
