"""The command registry and one module per command family; replies adapters render."""
