"""Image and text towers behind one small interface.

A backend turns images (PIL images or paths) and texts into embedding rows::

    backend.encode_images([...]) -> torch.Tensor [N, D]   (float32, on the CPU, not normalised)
    backend.encode_texts([...])  -> torch.Tensor [M, D]

:class:`HFDualEncoder` wraps a Hugging Face ``CLIPModel`` or ``SiglipModel`` (loaded with ``from_pretrained`` from
a hub id or a folder, safetensors only) and also exposes the differentiable pieces ContextBatch fine-tuning needs.
Its text tower reads at most ``text_limit`` tokens (77 for CLIP, 64 for SigLIP): longer descriptions are cut, as
the official scripts cut them (``clip.tokenize(..., truncate=True)``), and ``count_truncated`` says how many.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, Sequence

import torch

from ..errors import InputFileError, L2VError, ModelNotFoundError, UnsupportedModelError

logger = logging.getLogger(__name__)

SUPPORTED = ("clip", "siglip")
LOADER_THREADS = 8


class ImageTextBackend(Protocol):
    name: str

    def encode_images(self, images: Sequence) -> torch.Tensor: ...

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor: ...


def load_image(item):
    """An RGB PIL image from a PIL image or a path; an unreadable file is an error naming it."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(item, Image.Image):
        return item.convert("RGB")
    try:
        with Image.open(item) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise InputFileError(f"cannot read image {item}: {error}") from None


def _features(output) -> torch.Tensor:
    """The projected embedding from ``get_*_features`` (a tensor, or an output whose ``pooler_output`` holds it)."""
    return output if torch.is_tensor(output) else output.pooler_output


def _choose_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class HFDualEncoder:
    """A CLIP or SigLIP model with its tokenizer and image processor."""

    def __init__(self, model, tokenizer, image_processor, name: str, device: torch.device):
        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.name, self.device = name, device
        self.kind = model.config.model_type
        self.text_limit = int(model.config.text_config.max_position_embeddings)
        self.dimension = int(getattr(model.config, "projection_dim", 0) or self._probe_dimension())

    def _probe_dimension(self) -> int:
        with torch.no_grad():
            return int(self.text_features(self.tokenize(["probe"])).shape[-1])

    @classmethod
    def from_pretrained(cls, name: str, device: str | torch.device | None = None, dtype: str = "float32") -> "HFDualEncoder":
        """Load ``name`` (a hub id such as ``openai/clip-vit-base-patch16`` or ``google/siglip-base-patch16-224``,
        or a folder) with its tokenizer and image processor."""
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in dtypes:
            raise L2VError(f"dtype must be one of {', '.join(dtypes)}, got {dtype!r}")
        local = Path(name).is_dir()
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            config = AutoConfig.from_pretrained(name, local_files_only=local)
            if config.model_type not in SUPPORTED:
                raise UnsupportedModelError(f"{name} is a {config.model_type!r} model; the ImageCoDe backend takes a CLIP or "
                                            f"SigLIP model ({', '.join(SUPPORTED)})")
            model = AutoModel.from_pretrained(name, dtype=dtypes[dtype], use_safetensors=True, local_files_only=local)
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local)
            image_processor = AutoImageProcessor.from_pretrained(name, local_files_only=local)
        except (OSError, ValueError, ImportError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelNotFoundError(f"cannot load the image-text model {name!r}: {first}") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
        chosen = _choose_device(device)
        model.to(chosen).eval()
        return cls(model, tokenizer, image_processor, name, chosen)

    # ------------------------------------------------------------------ pieces (differentiable)
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids cut at the text tower's limit; SigLIP pads every text to the limit, as it was trained."""
        padding = "max_length" if self.kind == "siglip" else "longest"
        encoded = self.tokenizer(list(texts), padding=padding, truncation=True, max_length=self.text_limit,
                                 return_tensors="pt")
        keep = ("input_ids",) if self.kind == "siglip" else ("input_ids", "attention_mask")
        return {k: encoded[k].to(self.device) for k in keep if k in encoded}

    def text_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return _features(self.model.get_text_features(**inputs))

    def pixels(self, images: Sequence) -> torch.Tensor:
        """Preprocessed pixel values [N, 3, H, W] (images read and resized on a few threads)."""
        if not images:
            raise L2VError("no images to encode")

        def one(item):
            return self.image_processor(images=load_image(item), return_tensors="pt")["pixel_values"][0]

        with ThreadPoolExecutor(max_workers=min(LOADER_THREADS, len(images))) as pool:
            return torch.stack(list(pool.map(one, images)))

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = pixel_values.to(self.device, dtype=next(self.model.parameters()).dtype)
        return _features(self.model.get_image_features(pixel_values=pixel_values))

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    # ------------------------------------------------------------------ inference
    def encode_images(self, images: Sequence, batch_size: int = 64) -> torch.Tensor:
        rows = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                rows.append(self.image_features(self.pixels(images[start:start + batch_size])).float().cpu())
        return torch.cat(rows) if rows else torch.empty(0, self.dimension)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        rows = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                rows.append(self.text_features(self.tokenize(texts[start:start + batch_size])).float().cpu())
        return torch.cat(rows) if rows else torch.empty(0, self.dimension)

    def count_truncated(self, texts: Sequence[str]) -> int:
        """How many texts are longer than the text tower's limit (special tokens included) and are cut."""
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "sequence length is longer than the specified maximum": what we count
        try:
            lengths = [len(ids) for ids in self.tokenizer(list(texts), truncation=False)["input_ids"]]
        finally:
            hf_logging.set_verbosity(verbosity)
        return sum(n > self.text_limit for n in lengths)

    def save(self, folder: Path) -> None:
        """The model, tokenizer and image processor as a folder ``from_pretrained`` loads (safetensors)."""
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder)


class L2VTextTower:
    """An l2v text encoder (``l2v.Encoder``) as the text side: its embeddings, L2-normalised (frozen)."""

    def __init__(self, name: str, max_length: int | None = None, pooling: str | None = None,
                 instruction: str | None = None, batch_size: int = 32, device: str | None = None):
        from ..encoder import Encoder

        self.name, self.instruction, self.batch_size = name, instruction, batch_size
        self.encoder = Encoder.from_pretrained(name, max_length=max_length, pooling=pooling, device=device)
        self.dimension = self.encoder.dimension

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        embeddings, stats = self.encoder.encode(list(texts), batch_size=self.batch_size, normalize=True,
                                                instruction=self.instruction, return_stats=True)
        self.truncated = stats.truncated
        return torch.from_numpy(embeddings).float()
