"""The vLLM engine (`ember-bot serve --engine vllm`): the same Ember API on vLLM's async engine.

Install with `pip install 'ember-bot[vllm]'` on a CUDA machine (README: "Serving on vLLM"); this
package imports vLLM only when the engine starts, so the rest of the server never needs it.
"""
