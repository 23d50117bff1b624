"""The domain: value types, errors and input rules; imports nothing else of ours."""
