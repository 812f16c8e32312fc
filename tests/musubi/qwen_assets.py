"""Build what musubi-tuner's qwen_image_train_network.py needs for a CPU run, with no model hub:

* a randomly initialised Qwen-Image DiT with ONE transformer block, made with musubi-tuner's own
  ``qwen_image_model.create_model(num_layers=1)`` and saved as safetensors in its own key layout (the
  script loads it with ``--num_layers 1``; every block is full width, so the file is ~0.8 GB in bf16);
* four random 64x64 images with captions and a dataset config, and two more (held out) with a second
  dataset config, the validation set ``--loli_validation_dataset_config`` names;
* their latent and text-encoder caches, written with musubi-tuner's own dataset classes and its
  ``save_latent_cache_qwen_image`` / ``save_text_encoder_output_cache_qwen_image``, holding random
  tensors of the real shapes (16-channel latents at 1/8 resolution, 3584-wide text embeddings) in place
  of the VAE's and Qwen2.5-VL's outputs (training reads only the caches; no VAE or text encoder is
  loaded without sample prompts).

Run as a script (``python qwen_assets.py OUT``) so the weights live in a short-lived process; the result
is cached by the test fixture (everything is made from fixed seeds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: tests/ for assets_support
from assets_support import write_images  # noqa: E402

IMAGES = 4
TOKENS = 6  # text tokens per caption


HELD_OUT = 2  # validation images


def write_dataset_config(out: Path, name: str = "dataset.toml", data: str = "data", cache: str = "cache") -> Path:
    config = out / name
    config.write_text(
        '[general]\nresolution = [64, 64]\ncaption_extension = ".txt"\nbatch_size = 1\nenable_bucket = false\n\n'
        f'[[datasets]]\nimage_directory = "{out / data}"\ncache_directory = "{out / cache}"\nnum_repeats = 1\n'
    )
    return config


def write_caches(config: Path, seed: int = 1) -> None:
    import torch
    from musubi_tuner.dataset import config_utils
    from musubi_tuner.dataset.config_utils import BlueprintGenerator, ConfigSanitizer
    from musubi_tuner.dataset.image_video_dataset import (
        ARCHITECTURE_QWEN_IMAGE,
        save_latent_cache_qwen_image,
        save_text_encoder_output_cache_qwen_image,
    )

    # as qwen_image_cache_latents.py / qwen_image_cache_text_encoder_outputs.py set the datasets up
    blueprint = BlueprintGenerator(ConfigSanitizer()).generate(
        config_utils.load_user_config(str(config)), argparse.Namespace(), architecture=ARCHITECTURE_QWEN_IMAGE
    )
    (dataset,) = config_utils.generate_dataset_group_by_blueprint(blueprint.dataset_group).datasets
    g = torch.Generator().manual_seed(seed)
    for _, batch in dataset.retrieve_latent_cache_batches(1):
        for item in batch:
            height, width = item.content.shape[:2]
            latent = torch.randn(16, 1, height // 8, width // 8, generator=g).to(torch.bfloat16)  # (C, F, H, W)
            save_latent_cache_qwen_image(item_info=item, latent=latent, control_latent=None)
    for batch in dataset.retrieve_text_encoder_output_cache_batches(1):
        for item in batch:
            save_text_encoder_output_cache_qwen_image(item, torch.randn(TOKENS, 3584, generator=g).to(torch.bfloat16))


def write_dit(path: Path) -> None:
    import torch
    from musubi_tuner.qwen_image import qwen_image_model
    from safetensors.torch import save_file

    model = qwen_image_model.create_model("torch", False, False, False, False, torch.bfloat16, num_layers=1)
    model.to_empty(device="cpu")  # create_model builds on the meta device
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(std=0.02)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)  # norm scales
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.rename(path)


def main(out: str) -> None:
    out_dir = Path(out)
    write_images(out_dir / "data", IMAGES)
    config = write_dataset_config(out_dir)
    if not any((out_dir / "cache").glob("*_te.safetensors")):
        write_caches(config)
    # the held-out set: its own images, config and caches (as the user caches it, with the same scripts)
    write_images(out_dir / "val_data", HELD_OUT, seed=2, name="held-out thing")
    val_config = write_dataset_config(out_dir, "val_dataset.toml", "val_data", "val_cache")
    if not any((out_dir / "val_cache").glob("*_te.safetensors")):
        write_caches(val_config, seed=3)
    dit = out_dir / "qwen_image_1layer.safetensors"
    if not dit.exists():
        write_dit(dit)
    print(dit)


if __name__ == "__main__":
    main(sys.argv[1])
