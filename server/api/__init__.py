"""The Ember wire API: one thin router per route family, schemas, auth."""
