"""The self-hosted Ember-compatible server: api/ (wire), engine/ (runtime), model/ (what)."""
