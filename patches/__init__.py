"""Version-checked monkeypatches of trainer internals (installed as ``loli_plugin.patches``)."""
