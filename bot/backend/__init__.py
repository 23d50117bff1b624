"""The only door to the Ember API: HTTP, retries, SSE, wire builders, the gateway."""
