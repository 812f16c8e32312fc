"""Trainer adapters (installed as ``loli_plugin.adapters``): thin translations from a trainer's options
and call sites to the core engine. One module per trainer of scripts/trainers.toml, each with its
``.watch`` manifest and registered through the ``loli_plugin`` entry-point group like a third-party
adapter (docs/development.md, "Adding a trainer")."""
