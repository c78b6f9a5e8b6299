"""Text-to-speech backends for the dub stage."""
