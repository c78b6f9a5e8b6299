"""Handoff: the edit stage's timeline exported for editors (OTIO, FCP XML, JianYing) and platforms (covers,
per-platform delivery files), and an edited OTIO timeline rendered back (`microdrama edit --timeline`)."""
