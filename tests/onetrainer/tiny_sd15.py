"""Write a tiny, randomly initialised Stable Diffusion 1.5 model in diffusers folder layout, with no
model hub, for a real OneTrainer run on CPU:

* ``tokenizer/``: CLIPTokenizer files with a byte-level vocabulary (``tests/assets_support.py``'s writer:
  ``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407, no merges), made dense: OneTrainer's
  AdditionalEmbeddingWrapper keeps only the first ``len(tokenizer)`` rows of the token embedding, so the
  ids 512..49405 are filled with placeholder tokens that the merge-less BPE never produces;
* ``text_encoder/``: a 2-layer CLIPTextModel with SD1's vocabulary size and 77 positions, hidden size 32;
* ``unet/``: a 2-level UNet2DConditionModel (one cross-attention level) with ``cross_attention_dim`` 32;
* ``vae/``: an AutoencoderKL with 4 levels (the usual 8x latent factor) and 4 latent channels;
* ``scheduler/``: SD1.5's DDIMScheduler configuration (public values).

OneTrainer's StableDiffusionModelLoader reads such a folder offline (``__load_diffusers``). The whole
model is about 2.5 M parameters and takes a few seconds to write.
Run as ``python tiny_sd15.py MODEL_DIR [DATA_DIR]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run as a script: tests/ for assets_support
from assets_support import write_images, write_tokenizer  # noqa: E402

HIDDEN = 32


def write_model(out: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    write_tokenizer(out / "tokenizer")
    vocab_file = out / "tokenizer" / "vocab.json"
    vocab = json.loads(vocab_file.read_text())
    used = set(vocab.values())
    vocab.update({f"<|loli_unused_{i}|>": i for i in range(49408) if i not in used})
    assert sorted(vocab.values()) == list(range(49408))
    vocab_file.write_text(json.dumps(vocab))
    DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    ).save_config(out / "scheduler")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=HIDDEN,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=HIDDEN,
            pad_token_id=49407,
            bos_token_id=49406,
            eos_token_id=49407,
        )
    )
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=HIDDEN,
        attention_head_dim=8,
        norm_num_groups=8,
    ).save_pretrained(out / "unet", safe_serialization=True)
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.18215,
    ).save_pretrained(out / "vae", safe_serialization=True)
    (out / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "_diffusers_version": "0.39.0",
                "scheduler": ["diffusers", "DDIMScheduler"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "safety_checker": [None, None],
                "feature_extractor": [None, None],
                "requires_safety_checker": False,
            }
        )
    )


def main(model_dir: str, data_dir: str | None = None) -> None:
    """Write the model to ``model_dir`` (kept once complete: the folder is a cache) and, if given, four random
    64x64 images with captions to ``data_dir``."""
    model = Path(model_dir)
    if not (model / "model_index.json").is_file():
        import os
        import shutil

        tmp = model.with_name(f"{model.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_model(tmp)
        try:
            tmp.rename(model)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    if data_dir:
        write_images(Path(data_dir))
    print(model)


if __name__ == "__main__":
    main(*sys.argv[1:3])
