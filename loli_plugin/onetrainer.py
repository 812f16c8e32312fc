"""Launcher alias, not an integration: ``python -m loli_plugin.onetrainer SCRIPT ...`` is
``python -m loli_plugin.launch SCRIPT ...``, kept for commands written before the launcher served every
trainer. The OneTrainer integration is ``loli_plugin.adapters.onetrainer``."""

if __name__ == "__main__":
    __import__("loli_plugin.launch").launch.main()  # noqa: E701
