"""ImageCoDe (Krojer et al., ACL 2022): retrieve the one image a contextual description is about from ten minimally
different candidates. Data readers and checks (``data``), CLIP/SigLIP and l2v text backends (``backends``), the
context module and text projection (``models``), scoring (``evaluate``), the report (``report``), resumable
training (``train``) and the image-free floors (``floors``). The command is ``l2v imagecode``."""

from .data import Example, check_image_sets, is_static, load_split, read_descriptions, sort_image_names, source_of

__all__ = ["Example", "check_image_sets", "is_static", "load_split", "read_descriptions", "sort_image_names", "source_of"]
