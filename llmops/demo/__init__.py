"""The demo storefront: a synthetic travel marketplace (data generator and `llmops demo`)."""
