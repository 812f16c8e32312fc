"""Launcher alias, not an integration: ``python -m loli_plugin.kohya SCRIPT ...`` is
``python -m loli_plugin.launch SCRIPT ...``, kept for commands written before the launcher served every
trainer. The sd-scripts integration is ``loli_plugin.adapters.kohya``."""

if __name__ == "__main__":
    __import__("loli_plugin.launch").launch.main()  # noqa: E701
