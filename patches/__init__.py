"""Version-checked, undoable patches of trainer internals (installed as ``loli_plugin.patches``):
``instrument`` is the kit, one module per trainer holds its patches."""
