"""Test data every trainer's end-to-end run needs, written here with no model hub (the trainers' asset
writers, tests/*/..._assets.py and tests/onetrainer/tiny_sd15.py, import it; they run as scripts, so
they put this folder on sys.path themselves):

* a CLIP tokenizer folder with a byte-level vocabulary (no merges: every character is its own token,
  which is all a test caption needs);
* random 64x64 images with captions.
"""

from __future__ import annotations

import json
from pathlib import Path


def bytes_to_unicode():
    # GPT-2/CLIP's reversible byte -> printable-character table (public algorithm).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tokenizer(folder: Path) -> None:
    """CLIPTokenizer files in ``folder`` (``--tokenizer_cache_dir`` layout): ``<|startoftext|>`` = 49406,
    ``<|endoftext|>`` = 49407, no merges."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = 49406
    vocab["<|endoftext|>"] = 49407
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "model_max_length": 77,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "do_lower_case": True,
                "tokenizer_class": "CLIPTokenizer",
            }
        )
    )
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
            }
        )
    )


def write_images(folder: Path, n: int = 4, seed: int = 0, name: str = "thing") -> None:
    """``n`` random 64x64 RGB images ``img<i>.png`` from a fixed seed, each with its caption ``img<i>.txt``
    ("a photo of ``name`` number i"; another seed and name for a held-out set)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a photo of {name} number {i}")
