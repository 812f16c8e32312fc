"""Alias of ``python -m loli_plugin.launch`` (kept for existing sd-scripts commands)."""

if __name__ == "__main__":
    __import__("loli_plugin.launch").launch.main()  # noqa: E701
