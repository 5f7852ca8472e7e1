"""ImageCoDe pipeline check on real photographs (NOT an ImageCoDe result): the ImageCoDe images (13.8 GB) and
CLIP weights cannot be fetched on this machine, so this builds image sets in the official layout from the two
photographs scikit-learn ships (sklearn/datasets/images/china.jpg and flower.jpg), writes description files in the
official JSON layout, and runs the real zero-shot path (folder checks, numeric image order, JPEG decoding, the
CLIP image processor and towers, scoring, the report and the leaderboard file) with a tiny random CLIP saved
locally.

Two numbers come out, and neither says anything about ImageCoDe:

* zero-shot accuracy of the random tiny CLIP: chance level is expected (its towers were never trained);
* an "image as query" oracle on the same embeddings: each description is replaced by the embedding of its target
  image. 100 % means the pipeline pairs every description with the right ten files in the right order.

    OMP_NUM_THREADS=1 python benchmarks/imagecode_smoke.py
Writes benchmarks/results/imagecode_smoke.json (the working files go to benchmarks/out/imagecode_smoke/).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from PIL import Image, ImageOps

from _common import OUT, RESULTS

from l2v.fileio import write_json_atomic
from l2v.imagecode.backends import HFDualEncoder
from l2v.imagecode.data import check_image_sets, load_split
from l2v.imagecode.evaluate import ZeroShot, evaluate
from l2v.imagecode.report import write_report

FRAMES = [0, 4, 8, 12, 16, 20, 24, 28, 32, 36]  # video-style frame numbers: img12.. sort after img8 by number


def photographs() -> dict[str, Image.Image]:
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "images"
    return {name: Image.open(folder / f"{name}.jpg").convert("RGB") for name in ("china", "flower")}


def pan(photo: Image.Image, count: int, width: int = 240, height: int = 200) -> list[Image.Image]:
    """A camera pan: ``count`` overlapping crops sliding left to right (frames of one shot)."""
    step = (photo.width - width) // (count - 1)
    top = (photo.height - height) // 2
    return [photo.crop((i * step, top, i * step + width, top + height)) for i in range(count)]


def variants(photo: Image.Image) -> list[Image.Image]:
    """Ten minimally different pictures: crops of the four corners and the centre, each also mirrored."""
    w, h = photo.width // 2, photo.height // 2
    boxes = [(0, 0, w, h), (w, 0, 2 * w, h), (0, h, w, 2 * h), (w, h, 2 * w, 2 * h), (w // 2, h // 2, w // 2 + w, h // 2 + h)]
    crops = [photo.crop(box) for box in boxes]
    return crops + [ImageOps.mirror(c) for c in crops]


def build_sets(root: Path) -> dict[str, list[str]]:
    photos = photographs()
    sets = {
        "MSR-VTT-smoke-china-pan": pan(photos["china"], 10),
        "video-storytelling-smoke-flower-pan": pan(photos["flower"], 10),
        "open-images-smoke-china-crops": variants(photos["china"]),
        "open-images-smoke-flower-crops": variants(photos["flower"]),
    }
    names = {}
    for set_name, images in sets.items():
        folder = root / set_name
        folder.mkdir(parents=True)
        frames = FRAMES if "open-images" not in set_name else list(range(10))
        for frame, image in zip(frames, images):
            image.save(folder / f"img{frame}.jpg", quality=90)
        names[set_name] = [f"img{f}.jpg" for f in frames]
    return names


DESCRIPTIONS = {
    0: "the leftmost part of the scene", 2: "a little to the left of the middle", 5: "just right of the centre",
    7: "most of the right side is visible", 9: "the rightmost view",
}


def write_descriptions(data: Path, sets: dict[str, list[str]]) -> None:
    data.mkdir(parents=True)
    valid = {name: {str(i): f"{text} in {name.split('-smoke-')[1].replace('-', ' ')}" for i, text in DESCRIPTIONS.items()}
             for name in sets}
    (data / "valid_data.json").write_text(json.dumps(valid, indent=1))
    (data / "test_data_unlabeled.json").write_text(json.dumps({n: list(v.values()) for n, v in valid.items()}, indent=1))


def tiny_clip(folder: Path, words: list[str]) -> Path:
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(sorted(set(words)))}}
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=77, pad_token_id=0, bos_token_id=1, eos_token_id=2, **common),
        vision_config=dict(image_size=64, patch_size=16, **common), projection_dim=32)
    transformers.CLIPModel(config).save_pretrained(folder)
    transformers.CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(folder)
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                         unk_token="<unk>").save_pretrained(folder)
    return folder


class ImageAsQuery:
    """The oracle: a description's embedding is its target image's embedding (same tiny CLIP)."""

    def __init__(self, backend: HFDualEncoder, targets: dict[str, Path]):
        self.backend, self.targets = backend, targets
        self.name, self.text_limit, self.dimension = backend.name, backend.text_limit, backend.dimension

    def encode_images(self, images, batch_size=64):
        return self.backend.encode_images(images, batch_size)

    def encode_texts(self, texts, batch_size=256):
        return self.backend.encode_images([self.targets[t] for t in texts])

    def count_truncated(self, texts):
        return 0


def main() -> None:
    work = OUT / "imagecode_smoke"
    shutil.rmtree(work, ignore_errors=True)
    sets = build_sets(work / "image-sets")
    write_descriptions(work / "data", sets)
    examples = load_split(work / "data", "valid")
    words = [w for e in examples for w in e.description.split()]
    model = tiny_clip(work / "tiny-clip", words)
    began = time.perf_counter()
    checked = check_image_sets(work / "image-sets", examples)
    backend = HFDualEncoder.from_pretrained(str(model), device="cpu")
    zero_shot = evaluate(ZeroShot(backend), examples, checked)
    seconds = time.perf_counter() - began
    zero = write_report(work / "zero-shot", zero_shot, {"split": "valid", "model": "tiny random CLIP (pipeline check)"})
    targets = {e.description.strip(): checked[e.set_name][e.target] for e in examples}
    oracle = write_report(work / "oracle", evaluate(ZeroShot(ImageAsQuery(backend, targets)), examples, checked),
                          {"split": "valid", "model": "image-as-query oracle (pipeline check)"})
    test = load_split(work / "data", "test")
    write_report(work / "test", evaluate(ZeroShot(backend), test, check_image_sets(work / "image-sets", test)),
                 {"split": "test", "model": "tiny random CLIP"})
    predictions = json.loads((work / "test" / "predictions.json").read_text())
    numeric = [p.name for p in checked["MSR-VTT-smoke-china-pan"]]
    result = {
        "what": "PIPELINE CHECK, NOT AN ImageCoDe RESULT: image sets built from crops and flips of two photographs "
                "shipped with scikit-learn (china.jpg, flower.jpg), a tiny random CLIP (never trained), generated "
                "descriptions. Chance is 10 %.",
        "sets": {name: {"video": "open-images" not in name, "files_in_official_order": [p.name for p in checked[name]]}
                 for name in checked},
        "numeric_order_check": numeric == [f"img{f}.jpg" for f in FRAMES],
        "descriptions": len(examples),
        "zero_shot_tiny_random_clip": {k: zero[k] for k in ("accuracy", "mrr", "rank_histogram", "counts")},
        "image_as_query_oracle": {k: oracle[k] for k in ("accuracy", "mrr", "counts")},
        "leaderboard_file": {"sets": len(predictions), "predictions": sum(len(v) for v in predictions.values()),
                             "all_indices_0_to_9": all(0 <= i <= 9 for v in predictions.values() for i in v)},
        "seconds_zero_shot": round(seconds, 2),
        "command": "OMP_NUM_THREADS=1 python benchmarks/imagecode_smoke.py",
    }
    write_json_atomic(result, RESULTS / "imagecode_smoke.json")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
