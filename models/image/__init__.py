"""Storyboard (image) backends."""
