"""`ember-bot label`: automatic feature labels (autointerp) for any SAE the server can load.

Stages: corpus.py streams text into fixed token windows; collect.py runs them through the
model and keeps, per feature, its top activating windows, a uniform sample of its other
activating windows and a shared pool of windows for non-activating examples, in bounded memory
and checkpointed; prompts.py and explainer.py ask an OpenAI-compatible chat endpoint for a
label; score.py scores each label by detection; output.py writes the label file atomically;
pipeline.py runs the stages with progress bars. sources.py merges label files for the server.
"""
