"""Trainer adapters (installed as ``loli_plugin.adapters``): thin translations from a trainer's
options and call sites to the core engine. Filled in by the kohya and OneTrainer adapters."""
