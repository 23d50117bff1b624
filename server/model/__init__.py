"""What is served: SAE formats, downloads, labels and search, feature ids, presets, tiny."""
