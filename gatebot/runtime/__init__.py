"""Where containers run: the Runtime interface and its Docker implementation."""
