"""The runtime: steering math, chat templates, batched generation, readouts, the worker."""
