"""Script-writing (LLM) backends."""
