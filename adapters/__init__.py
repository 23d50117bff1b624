"""Platform adapters and the `ember-bot` command: the outermost layer."""
