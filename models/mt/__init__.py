"""Machine-translation backends for the dub stage."""
