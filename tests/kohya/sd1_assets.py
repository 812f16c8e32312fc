"""Build what sd-scripts' train_network.py needs for an SD1.x run, with no model hub:

* a randomly initialised SD1.x checkpoint, built with sd-scripts' own model classes and saved with its
  own ``model_util.save_stable_diffusion_checkpoint`` (the SD1 U-Net architecture is fixed in
  library/original_unet.py, so the model is full size: ~2 GB at fp16);
* a CLIP tokenizer folder in ``--tokenizer_cache_dir`` layout and four random 64x64 images with
  captions (tests/assets_support.py).

Run as a script (``python sd1_assets.py OUT``) so the ~3.5 GB of fp32 weights live in a short-lived
process; the result is cached by the test fixture.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: tests/ for assets_support
from assets_support import write_images, write_tokenizer  # noqa: E402


def write_checkpoint(path: Path) -> None:
    import torch
    from diffusers import AutoencoderKL
    from library import model_util
    from library.original_unet import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**model_util.create_unet_diffusers_config(False))
    vae = AutoencoderKL(**model_util.create_vae_diffusers_config())
    # CLIP ViT-L/14's text tower, the SD1.x text encoder (public hyper-parameters)
    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        projection_dim=768,
    )
    text_encoder = CLIPTextModel(cfg)
    tmp = path.with_suffix(".tmp.safetensors")
    model_util.save_stable_diffusion_checkpoint(False, str(tmp), text_encoder, unet, None, 0, 0, {}, torch.float16, vae)
    tmp.rename(path)


def main(out: str) -> None:
    out_dir = Path(out)
    write_tokenizer(out_dir / "tokenizers" / "openai_clip-vit-large-patch14")
    write_images(out_dir / "data" / "1_thing")
    ckpt = out_dir / "sd1-random.safetensors"
    if not ckpt.exists():
        write_checkpoint(ckpt)
    print(ckpt)


if __name__ == "__main__":
    main(sys.argv[1])
